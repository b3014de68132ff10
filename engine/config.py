"""Model and engine configuration.

`ModelConfig` reads a Hugging Face `config.json` in both the transformers 4 and 5
spellings; `EngineConfig` holds the knobs an operator sets for one replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import ModelLoadError
from .jsonfile import read_json
from .hosts.cpu_features import default_dtype

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                           "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM")
# Architectures whose checkpoints carry q/k biases unless their config says otherwise.
_QKV_BIAS_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM")

_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32",
                "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16", "half": "float16"}
QUANTIZATIONS = ("int8", "fp8")  # what a load quantizes a bf16/fp32 checkpoint's linear layers to
KV_CACHE_DTYPES = ("auto", "fp8")  # auto: the model dtype
CHECKPOINT_FP8_METHODS = ("compressed-tensors", "fbgemm_fp8")  # quant_method values read as they are


def _checkpoint_quantization(raw: dict[str, Any]) -> str | None:
    """"fp8" for a checkpoint quantized to fp8 in a way we read, else what it is (to refuse)."""
    qc = raw.get("quantization_config")
    if not qc:
        return None
    method = str(qc.get("quant_method", "?"))
    if method not in CHECKPOINT_FP8_METHODS:
        return method
    if method == "compressed-tensors":
        for group in (qc.get("config_groups") or {}).values():
            w = group.get("weights") or {}
            if (w.get("type"), w.get("num_bits"), w.get("strategy")) not in (("float", 8, "tensor"),
                                                                              ("float", 8, "channel")):
                return (f"{method} with {w.get('type')} {w.get('num_bits')}-bit weights per "
                        f"{w.get('strategy')}")
    return "fp8"


def _sliding_window(raw: dict[str, Any]) -> int | None:
    if raw.get("use_sliding_window") is False or not raw.get("sliding_window"):
        return None
    return int(raw["sliding_window"])


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tie_word_embeddings: bool
    qkv_bias: bool
    dtype: str  # the checkpoint's dtype name, e.g. "bfloat16"
    sliding_window: int | None = None  # Mistral v0.1: attention span limit
    num_experts: int = 0  # MoE models; 0 = dense
    experts_per_token: int = 0
    moe_intermediate_size: int = 0  # one routed expert's intermediate width
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE's always-on expert; 0 = none
    norm_topk_prob: bool = False  # renormalise the chosen experts' weights to sum to 1
    decoder_sparse_step: int = 1  # layer i is MoE when (i + 1) % step == 0 ...
    mlp_only_layers: tuple[int, ...] = ()  # ... and i is not listed here
    clip_qkv: float | None = None  # OLMoE's optional q/k/v clamp (not supported)
    # Multi-head latent attention (DeepSeek-V3), planned only: a KV cache of one latent
    # vector of kv_lora_rank plus the rope part per token and layer; 0 = ordinary attention.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    quantization: str | None = None  # the checkpoint's own: "fp8", or an unsupported method's name

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        arch = (raw.get("architectures") or ["?"])[0]
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        rope = raw.get("rope_parameters") or {}
        mla = int(raw.get("kv_lora_rank") or 0)
        moe_width = int(raw.get("moe_intermediate_size") or raw["intermediate_size"])
        scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
        return cls(
            architecture=arch,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw["qk_nope_head_dim"] + raw["qk_rope_head_dim"] if mla
                         else raw.get("head_dim") or hidden // heads),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=dict(scaling) if scaling else None,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=bool(raw.get("qkv_bias", arch in _QKV_BIAS_ARCHITECTURES) or raw.get("attention_bias", False)),
            dtype=_DTYPE_NAMES.get(str(raw.get("dtype") or raw.get("torch_dtype") or "float32"), "float32"),
            sliding_window=_sliding_window(raw),
            num_experts=int(raw.get("num_local_experts") or raw.get("num_experts") or raw.get("n_routed_experts") or 0),
            experts_per_token=int(raw.get("num_experts_per_tok") or 0),
            # Mixtral's experts are intermediate_size wide and always renormalised.
            moe_intermediate_size=moe_width,
            shared_expert_intermediate_size=int(raw.get("shared_expert_intermediate_size")
                                                or moe_width * int(raw.get("n_shared_experts") or 0)),
            norm_topk_prob=bool(raw.get("norm_topk_prob", arch == "MixtralForCausalLM")),
            decoder_sparse_step=int(raw.get("decoder_sparse_step") or raw.get("moe_layer_freq") or 1),
            # DeepSeek: the first first_k_dense_replace layers are dense.
            mlp_only_layers=tuple(int(i) for i in raw.get("mlp_only_layers")
                                  or range(int(raw.get("first_k_dense_replace") or 0))),
            clip_qkv=raw.get("clip_qkv"),
            kv_lora_rank=mla,
            q_lora_rank=int(raw.get("q_lora_rank") or 0),
            qk_rope_head_dim=int(raw.get("qk_rope_head_dim") or 0),
            v_head_dim=int(raw.get("v_head_dim") or 0),
            quantization=_checkpoint_quantization(raw),
        )

    @classmethod
    def from_dir(cls, path: Path) -> ModelConfig:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ModelLoadError(f"{file} is missing: a model directory needs config.json "
                                 "(Hugging Face format: config.json, *.safetensors, tokenizer.json)")
        return cls.from_dict(read_json(file))

    def check_supported(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(f"architecture {self.architecture} is not supported; "
                                 f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        if self.clip_qkv is not None:
            raise ModelLoadError(f"clip_qkv={self.clip_qkv} in config.json is not supported; "
                                 "mgpud serves OLMoE checkpoints without a q/k/v clamp")
        if self.quantization not in (None, "fp8"):
            raise ModelLoadError(f"quantization {self.quantization} (config.json quantization_config) is not "
                                 f"supported; mgpud reads fp8 checkpoints ({', '.join(CHECKPOINT_FP8_METHODS)}) "
                                 "and quantizes bf16/fp32 checkpoints at load (--quantization int8|fp8)")

    def is_moe_layer(self, layer: int) -> bool:
        return (self.num_experts > 0 and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    def weight_quantization(self, asked: str | None) -> str | None:
        """What the linear layers run in: the checkpoint's fp8, else what the load `asked`."""
        if self.quantization is None or asked in (None, self.quantization):
            return self.quantization or asked
        raise ModelLoadError(f"this checkpoint is quantized to {self.quantization} already; it cannot be "
                             f"loaded as {asked}: leave --quantization out, or load a bf16/fp32 checkpoint")

    def resolve_max_model_len(self, wanted: int | None) -> int:
        # Within a sliding window, full attention is exact; past it, we would be wrong.
        limit = min(self.max_position_embeddings, self.sliding_window or self.max_position_embeddings)
        if wanted is not None and wanted > limit:
            raise ModelLoadError(f"max_model_len={wanted} exceeds what this model attends to "
                                 f"({limit} tokens); use at most {limit}")
        return wanted or limit

    def valid_tp_degrees(self, limit: int = 64) -> list[int]:
        return [tp for tp in range(1, limit + 1) if self.tp_problem(tp) is None]

    def tp_problem(self, tp: int) -> str | None:
        if tp < 1 or self.num_heads % tp or self.num_kv_heads % tp:
            return (f"tp={tp} does not divide this model's {self.num_heads} attention heads and "
                    f"{self.num_kv_heads} KV heads")
        return None

    def moe_layers(self) -> int:
        return sum(self.is_moe_layer(n) for n in range(self.num_layers))

    def attention_params(self) -> int:
        """One layer's attention projections, with their biases."""
        h, heads, d = self.hidden_size, self.num_heads, self.head_dim
        if self.kv_lora_rank:  # MLA: low-rank q, a shared latent for k/v, per-head up-projections
            r, rope = self.kv_lora_rank, self.qk_rope_head_dim
            q = h * self.q_lora_rank + self.q_lora_rank * heads * d if self.q_lora_rank else h * heads * d
            return q + h * (r + rope) + r * heads * (d - rope + self.v_head_dim) + heads * self.v_head_dim * h
        q, kv = heads * d, self.num_kv_heads * d
        return h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0)

    def expert_params(self) -> int:
        """One routed expert's matrices (gate, up, down)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    def mlp_params(self, active: bool = False) -> int:
        """Every layer's MLP matrices: all experts, or (active) those one token runs."""
        routed = self.experts_per_token if active else self.num_experts
        moe = self.expert_params() * routed + 3 * self.hidden_size * self.shared_expert_intermediate_size
        moe_layers = self.moe_layers()
        return moe * moe_layers + 3 * self.hidden_size * self.intermediate_size * (self.num_layers - moe_layers)

    def replicated_params(self) -> int:
        """Norms and MoE routers: whole on every rank."""
        return (2 * self.num_layers + 1) * self.hidden_size + self.moe_layers() * self.hidden_size * self.num_experts

    def param_count(self, active: bool = False) -> int:
        """Parameters of the whole model (embeddings counted once when tied); `active`: those
        one token computes with (the experts it is routed to, not all of them)."""
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * self.attention_params() + self.mlp_params(active) + self.replicated_params() + embed

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> int:
        """K and V bytes one token occupies on one rank of a tp-way replica. MLA caches one
        latent per token and layer, the same on every rank."""
        if self.kv_lora_rank:
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes
        return 2 * self.num_layers * (self.num_kv_heads // tp) * self.head_dim * dtype_bytes


def cpu_kv_blocks_cap(max_num_seqs: int, max_model_len: int, block_size: int) -> int:
    """KV blocks a CPU device reserves at most: what the batch limits can fill. Its memory is
    the host's, so it holds no more than `max_num_seqs` sequences of `max_model_len` tokens."""
    return max_num_seqs * -(-max_model_len // block_size)


@dataclass
class EngineConfig:
    """One replica's settings; see docs/engine-api.md."""

    model: str
    tp: int = 1
    dtype: str | None = None  # None or "auto": see dtype_name
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    memory_utilization: float = 0.9
    device_memory: int | None = None  # bytes per CPU virtual device
    kv_cache_memory: int | None = None  # bytes per rank; overrides profiling
    threads_per_device: int = 1
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # True: no CUDA graphs for decode steps (CPU devices never use them)
    enable_expert_parallel: bool = False  # MoE: whole experts per rank instead of slices of all
    quantization: str | None = None  # QUANTIZATIONS: the linear layers' weights, quantized at load
    kv_cache_dtype: str = "auto"  # KV_CACHE_DTYPES

    def check(self) -> None:
        problems = []
        if self.tp < 1:
            problems.append(f"tp must be >= 1 (got {self.tp})")
        if not 0.0 < self.memory_utilization <= 1.0:
            problems.append(f"memory_utilization must be in (0, 1] (got {self.memory_utilization})")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            problems.append(f"block_size must be a power of two (got {self.block_size})")
        if self.max_num_seqs < 1:
            problems.append(f"max_num_seqs must be >= 1 (got {self.max_num_seqs})")
        if self.max_num_batched_tokens < self.block_size:
            problems.append(f"max_num_batched_tokens must be >= block_size (got {self.max_num_batched_tokens})")
        if self.dtype not in (None, "auto") and self.dtype not in _DTYPE_NAMES:
            problems.append(f"dtype {self.dtype!r} unknown; use auto, float32, bfloat16 or float16")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            problems.append(f"quantization {self.quantization!r} unknown; use {' or '.join(QUANTIZATIONS)}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            problems.append(f"kv_cache_dtype {self.kv_cache_dtype!r} unknown; use {' or '.join(KV_CACHE_DTYPES)}")
        if problems:
            raise ModelLoadError("; ".join(problems))

    def dtype_name(self, on_cuda: bool) -> str:
        """The dtype weights and KV run in. auto: bfloat16 on CUDA and on CPUs with bf16 matrix
        instructions, float32 on other CPUs, where bf16 matmuls are emulated and run slower."""
        if self.dtype not in (None, "auto"):
            return _DTYPE_NAMES[self.dtype]
        return default_dtype(on_cuda)
