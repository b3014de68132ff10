"""The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2): one decoder, sharded for TP.

Per layer the forward pass does exactly two all-reduces: after o_proj and after
down_proj (both row-parallel); q/k/v and gate/up are fused column-parallel layers.
Subclasses (models/families.py) choose the q/k norm and each layer's MLP.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...config import ModelConfig
from .. import kernels
from ..layers.attention import AttentionMetadata, KVCache, paged_attention
from ..layers.embedding import ParallelLMHead, VocabParallelEmbedding
from ..layers.linear import ColumnParallelLinear, RowParallelLinear
from ..layers.norm import RMSNorm, SplitRMSNorm, split_rms_norm
from ..layers.quant import LinearMethod, Unquantized, vocab_method
from ..parallel import TPGroup

# checkpoint name fragment -> (our fused module, which part of it)
PACKED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}


class LlamaAttention(nn.Module):
    """qk_norm: None; "head" (Qwen3: RMSNorm over each head, replicated); or "full" (OLMoE:
    RMSNorm over the whole q and k projections, split across ranks)."""

    def __init__(self, cfg: ModelConfig, group: TPGroup, dtype: torch.dtype, method: LinearMethod,
                 qk_norm: str | None = None):
        super().__init__()
        d = cfg.head_dim
        self.num_heads = cfg.num_heads // group.size
        self.num_kv_heads = cfg.num_kv_heads // group.size
        self.head_dim = d
        self.scale = d ** -0.5
        self.qkv_proj = ColumnParallelLinear(
            cfg.hidden_size, [cfg.num_heads * d, cfg.num_kv_heads * d, cfg.num_kv_heads * d],
            group, bias=cfg.qkv_bias, dtype=dtype, method=method)
        self.o_proj = RowParallelLinear(cfg.num_heads * d, cfg.hidden_size, group, dtype, method)
        self.qk_norm = qk_norm
        if qk_norm == "head":
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype)
        elif qk_norm == "full":
            self.q_norm = SplitRMSNorm(cfg.num_heads * d, cfg.rms_norm_eps, group, dtype)
            self.k_norm = SplitRMSNorm(cfg.num_kv_heads * d, cfg.rms_norm_eps, group, dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: torch.Tensor,
                meta: AttentionMetadata, cache: KVCache) -> torch.Tensor:
        t, d = x.shape[0], self.head_dim
        q, k, v = self.qkv_proj(x).split(
            [self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        if self.qk_norm == "full":
            q, k = split_rms_norm([(q, self.q_norm), (k, self.k_norm)])
        elif self.qk_norm == "head":
            q = self.q_norm(q.reshape(-1, d))[0]
            k = self.k_norm(k.reshape(-1, d))[0]
        q, k, v = q.reshape(t, -1, d), k.reshape(t, -1, d), v.reshape(t, -1, d)
        kernels.apply_rotary(q, k, positions, rope)
        out = paged_attention(q, k, v, meta, cache, self.scale)
        return self.o_proj(out.view(t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, i: int, group: TPGroup, dtype: torch.dtype, method: LinearMethod):
        super().__init__()
        self.gate_up_proj = ColumnParallelLinear(hidden, [i, i], group, bias=False, dtype=dtype, method=method)
        self.down_proj = RowParallelLinear(i, hidden, group, dtype, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, group: TPGroup, dtype: torch.dtype, mlp: nn.Module,
                 method: LinearMethod, qk_norm: str | None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(cfg, group, dtype, method, qk_norm)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                rope: torch.Tensor, meta: AttentionMetadata, cache: KVCache
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions, rope, meta, cache)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, group: TPGroup, dtype: torch.dtype, mlps: list[nn.Module],
                 method: LinearMethod, qk_norm: str | None):
        super().__init__()
        # Untied, the embedding stays in the model dtype; tied, it is the LM head's rows.
        embedding = vocab_method(method) if cfg.tie_word_embeddings else Unquantized()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, group, dtype, embedding)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, group, dtype, mlp, method, qk_norm) for mlp in mlps)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class LlamaForCausalLM(nn.Module):
    packed = PACKED
    renamed: ClassVar[dict[str, str]] = {}  # checkpoint module name -> ours, where they differ
    qk_norm: str | None = None

    def __init__(self, cfg: ModelConfig, group: TPGroup, dtype: torch.dtype, max_positions: int,
                 expert_parallel: bool = False, method: LinearMethod | None = None):
        super().__init__()
        method = method or Unquantized()
        mlps = [self.layer_mlp(cfg, group, dtype, n, expert_parallel, method) for n in range(cfg.num_layers)]
        self.model = LlamaModel(cfg, group, dtype, mlps, method, self.qk_norm)
        # Quantized as the linear layers are, per vocabulary row (quant.py vocab_method says why).
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, group, dtype, vocab_method(method))
        if cfg.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)
        rope = kernels.build_rotary_cache(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("rope", rope.to(self.lm_head.weight.device), persistent=False)

    def layer_mlp(self, cfg: ModelConfig, group: TPGroup, dtype: torch.dtype, layer: int,
                  expert_parallel: bool, method: LinearMethod) -> nn.Module:
        """Layer `layer`'s MLP."""
        return LlamaMLP(cfg.hidden_size, cfg.intermediate_size, group, dtype, method)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                caches: list[KVCache]) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm."""
        x, residual = self.model.embed_tokens(ids), None
        for layer, cache in zip(self.model.layers, caches):
            x, residual = layer(x, residual, positions, self.rope, meta, cache)
        return self.model.norm(x, residual)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Full-vocab logits on rank 0 (None on the other ranks)."""
        return self.lm_head(hidden)
