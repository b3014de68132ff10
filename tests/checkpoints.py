"""Tiny random Hugging Face checkpoints with a small real tokenizer, for fast tests.

The weights are drawn with a large `initializer_range` (0.08) and perturbed norm
weights and biases, so that greedy decoding varies token by token and a loader that
drops or misplaces any tensor changes the output.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
BOS_ID, EOS_ID = 1, 2
TOKENIZER_VOCAB = 512

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe")

_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_CORPUS = """\
The daemon serves language models on one machine. An operator starts it from a terminal,
watches the dashboard, and changes the number of replicas while requests keep arriving.
Each replica holds a copy of the model, split across its devices by tensor parallelism.
When a request comes in, the router picks the replica with the most free memory for the
key and value cache, and the scheduler of that replica puts the request in its queue.
The scheduler builds a batch at every step: new prompts are read in chunks, and running
sequences produce one token each. A sequence stops when it reaches its end token, its
length limit, or when the user cancels it. Tokens stream back to the client as they are
made, so the first words appear long before the answer is complete.
What is the capital of France? The capital of France is Paris. What is the capital of
Italy? The capital of Italy is Rome. Tell me a story about a cat and a dog. Once upon a
time there was a small cat who lived with a large dog in a house near the river. Every
morning the cat woke the dog, and every evening the dog walked the cat home. They shared
their food, their garden and their long afternoons in the sun. One day the river rose
and the water came into the garden; the dog carried the cat to the top of the hill, and
from there they watched the water go down again. After that day they were never apart.
Write a short poem about the sea. The sea is wide, the sea is deep, the waves are high,
the wind is cold; the ships go out, the ships come home, and the sea remains as it was.
Numbers and symbols also appear in text: 1, 2, 3, 10, 42, 100, 2024; a + b = c; (x, y);
"quoted words", it's, don't, we're, you'll. Hello! How are you today? I am fine, thank
you. Please answer the question in one sentence. Sure, here is the answer you asked for.
"""

_HF_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM"),
}

# Each family's own knobs, small: 4-8 experts, top-2, experts half the dense MLP's width.
# Qwen2-MoE keeps layer 0 dense (mlp_only_layers) and has a shared expert; Qwen3-MoE
# renormalises the chosen weights, OLMoE does not.
_ARCH_EXTRAS: dict[str, dict[str, Any]] = {
    "qwen3": {"head_dim": 16},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 48, "mlp_only_layers": [0]},
    "qwen3_moe": {"head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "norm_topk_prob": True},
    "olmoe": {"num_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32},
}


@functools.cache
def tokenizer_json() -> str:
    """A byte-level BPE tokenizer trained on the built-in text; trained once, deterministic."""
    tok = Tokenizer(models.BPE())
    # Qwen2's pipeline: transformers 5 imposes it on any qwen2 checkpoint's tokenizer,
    # so using it everywhere keeps tokenizer.json and the transformers oracle in agreement.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer)
    return tok.to_str()


def write_tokenizer(path: Path) -> int:
    """Write tokenizer.json and tokenizer_config.json into `path`; returns the vocab size."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(tokenizer_json())
    config = {
        "tokenizer_class": "TokenizersBackend",
        "bos_token": SPECIAL_TOKENS[1],
        "eos_token": SPECIAL_TOKENS[2],
        "unk_token": SPECIAL_TOKENS[0],
        "pad_token": SPECIAL_TOKENS[0],
        "add_bos_token": False,
        "model_max_length": 1 << 20,
        "chat_template": CHATML_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Tokenizer.from_str(tokenizer_json()).get_vocab_size()


def make_tiny_checkpoint(
    path: Path,
    arch: str,
    *,
    tied: bool = False,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 512,
    initializer_range: float = 0.08,
    shards: int = 1,
    rope_scaling: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A float32 random `arch` model (one of ARCHITECTURES) saved in `path` as the hub has it
    (MoE experts as per-expert tensors)."""
    import transformers

    if arch not in _HF_CLASSES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHITECTURES}")
    config_cls, model_cls = (getattr(transformers, name) for name in _HF_CLASSES[arch])
    vocab = write_tokenizer(path)
    extras = {"intermediate_size": intermediate, **_ARCH_EXTRAS.get(arch, {})}
    config = config_cls(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
        tie_word_embeddings=tied,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        dtype="float32",
        **extras,
    )
    if rope_scaling is not None:
        # transformers 5 keeps rope_theta and the scaling in one rope_parameters dict.
        config.rope_parameters = {**config.rope_parameters, **rope_scaling}
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    _perturb(model, initializer_range, seed)
    model.generation_config = transformers.GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if shards > 1:
        model.save_pretrained(path, max_shard_size=_shard_bytes(model, shards))
    else:
        model.save_pretrained(path)
    return path


def _perturb(model: torch.nn.Module, initializer_range: float, seed: int) -> None:
    # transformers starts norms at 1 and biases at 0: values a loader could skip unnoticed.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
            elif name.endswith(".bias"):
                param.copy_(4 * initializer_range * torch.randn(param.shape, generator=gen))


def _shard_bytes(model: torch.nn.Module, shards: int) -> int:
    # save_pretrained never splits a tensor, so the count is only close to `shards`.
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return -(-sum(unique.values()) // shards)


_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_fp8_checkpoint(source: Path, path: Path, reference: Path, *, method: str = "compressed-tensors",
                        per_channel: bool = True) -> Path:
    """`source`'s linear layers quantized to float8_e4m3fn as `method` (compressed-tensors,
    fbgemm_fp8) stores them (`weight` + `weight_scale`, per tensor or per output channel),
    saved in `path`; `reference` gets the same model dequantized (float32, no
    quantization_config), for transformers to run. Returns `path`."""
    import shutil

    from safetensors.torch import load_file, save_file

    quantized: dict[str, torch.Tensor] = {}
    dequantized: dict[str, torch.Tensor] = {}
    for name, tensor in load_file(str(source / "model.safetensors")).items():
        if name.split(".")[-2] not in _LINEAR or not name.endswith(".weight"):
            quantized[name] = dequantized[name] = tensor
            continue
        amax = tensor.abs().amax(dim=1, keepdim=True) if per_channel else tensor.abs().amax().reshape(1)
        scale = amax.float() / torch.finfo(torch.float8_e4m3fn).max
        weight = (tensor / scale).to(torch.float8_e4m3fn)
        quantized[name], quantized[name + "_scale"] = weight, scale
        dequantized[name] = weight.float() * scale
    config = json.loads((source / "config.json").read_text())
    for folder in (path, reference):
        folder.mkdir(parents=True, exist_ok=True)
        for file in source.iterdir():
            if file.name not in ("model.safetensors", "config.json"):
                shutil.copy(file, folder / file.name)
    save_file(quantized, str(path / "model.safetensors"))
    save_file(dequantized, str(reference / "model.safetensors"))
    (reference / "config.json").write_text(json.dumps(config))
    (path / "config.json").write_text(json.dumps({**config, "quantization_config": _fp8_config(method, per_channel)}))
    return path


def _fp8_config(method: str, per_channel: bool) -> dict[str, Any]:
    if method == "fbgemm_fp8":
        return {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]}
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False,
               "strategy": "channel" if per_channel else "tensor"}
    activations = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True, "strategy": "token"}
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": activations}}}
