"""Llama-shaped families that differ only in their q/k norm and their MLPs: dense Qwen3, and
the mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...config import ModelConfig
from ..layers.moe import SparseMoE
from ..layers.quant import LinearMethod
from ..parallel import TPGroup
from .llama import PACKED, LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = "head"


class MoEForCausalLM(LlamaForCausalLM):
    """Qwen2-MoE (shared expert from its config); the MoE layers are those the config names."""

    def layer_mlp(self, cfg: ModelConfig, group: TPGroup, dtype: torch.dtype, layer: int,
                  expert_parallel: bool, method: LinearMethod) -> nn.Module:
        if not cfg.is_moe_layer(layer):
            return super().layer_mlp(cfg, group, dtype, layer, expert_parallel, method)
        # The routed experts are stacked tensors of their own, kept in the model dtype: the
        # quantization methods cover the attention and dense MLP projections and the LM head only.
        return SparseMoE(cfg, group, dtype, expert_parallel)


class MixtralForCausalLM(MoEForCausalLM):
    packed: ClassVar[dict[str, tuple[str, int]]] = {**PACKED, "w1": ("gate_up_proj", 0), "w3": ("gate_up_proj", 1),
                                                   "w2": ("down_proj", 0)}
    renamed: ClassVar[dict[str, str]] = {"block_sparse_moe": "mlp"}


class Qwen3MoeForCausalLM(MoEForCausalLM):
    qk_norm = "head"


class OlmoeForCausalLM(MoEForCausalLM):
    qk_norm = "full"
