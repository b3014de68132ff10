"""Model presets: the public config.json values of models operators ask about (only the
keys ModelConfig reads), so that `plan` answers without a download."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..store.demo import DEMO_NAME

_LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}

_LLAMA31 = {"architectures": ["LlamaForCausalLM"], "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
            "rope_scaling": _LLAMA3_ROPE, "tie_word_embeddings": False, "attention_bias": False,
            "torch_dtype": "bfloat16"}

_QWEN3_MOE = {"architectures": ["Qwen3MoeForCausalLM"], "num_key_value_heads": 4, "head_dim": 128,
              "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True, "decoder_sparse_step": 1,
              "mlp_only_layers": [], "vocab_size": 151936, "max_position_embeddings": 40960,
              "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16"}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B": {**_LLAMA31, "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32},
    "Llama-3.1-70B": {**_LLAMA31, "hidden_size": 8192, "intermediate_size": 28672,
                      "num_hidden_layers": 80, "num_attention_heads": 64},
    "Qwen2.5-72B": {  # Qwen/Qwen2.5-72B-Instruct
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 8192, "intermediate_size": 29568,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
        "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "Mistral-7B": {  # mistralai/Mistral-7B-v0.3
        "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32768, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "Mixtral-8x7B": {  # mistralai/Mixtral-8x7B-v0.1
        "architectures": ["MixtralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "num_local_experts": 8, "num_experts_per_tok": 2},
    "Qwen3-30B-A3B": {  # Qwen/Qwen3-30B-A3B
        **_QWEN3_MOE, "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
        "num_hidden_layers": 48, "num_attention_heads": 32},
    "Qwen3-235B-A22B": {  # Qwen/Qwen3-235B-A22B
        **_QWEN3_MOE, "hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 1536,
        "num_hidden_layers": 94, "num_attention_heads": 64},
    "DeepSeek-V3": {  # deepseek-ai/DeepSeek-V3 (planned, not served: multi-head latent attention)
        "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 7168, "intermediate_size": 18432,
        "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
        "num_key_value_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
        "first_k_dense_replace": 3, "moe_layer_freq": 1, "norm_topk_prob": True, "q_lora_rank": 1536,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "vocab_size": 129280, "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "gpt-oss-120b": {  # openai/gpt-oss-120b (planned, not served; its sliding-window layers are counted whole)
        "architectures": ["GptOssForCausalLM"], "hidden_size": 2880, "intermediate_size": 2880,
        "num_hidden_layers": 36, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
        "num_local_experts": 128, "num_experts_per_tok": 4, "attention_bias": True, "vocab_size": 201088,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 150000,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "SmolLM2-135M": {  # HuggingFaceTB/SmolLM2-135M(-Instruct), the demo model
        "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
}

_MODEL_ALIASES = {"mistral-7b-v0.3": "Mistral-7B", "mixtral-8x7b-v0.1": "Mixtral-8x7B",
                  DEMO_NAME: "SmolLM2-135M"}


def model_preset(name: str) -> ModelConfig | None:
    """The preset `name` designates: "Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3", "demo" (instruct variants share the architecture)."""
    key = name.rsplit("/", 1)[-1].lower().replace("-instruct", "")
    key = _MODEL_ALIASES.get(key, key)
    for preset, raw in MODEL_PRESETS.items():
        if preset.lower() == key.lower():
            return ModelConfig.from_dict(raw)
    return None


