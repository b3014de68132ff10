"""Model registry: architecture name (config.json) -> implementation."""

from __future__ import annotations

from torch import nn

from ...config import SUPPORTED_ARCHITECTURES, ModelConfig
from ...exceptions import ModelLoadError
from .families import MixtralForCausalLM, MoEForCausalLM, OlmoeForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM
from .llama import LlamaForCausalLM

_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": MoEForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "OlmoeForCausalLM": OlmoeForCausalLM,
}
assert set(_REGISTRY) == set(SUPPORTED_ARCHITECTURES)


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    cfg.check_supported()
    try:
        return _REGISTRY[cfg.architecture]
    except KeyError:
        raise ModelLoadError(f"architecture {cfg.architecture} has no implementation") from None
