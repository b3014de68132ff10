"""Quantized weights (int8, fp8 per output channel, quantized at load), fp8 checkpoints read
as they are, and the fp8 KV cache: what they hold, and how far their outputs move."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch
from checkpoints import make_fp8_checkpoint
from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from mgpud.engine.config import ModelConfig
from mgpud.engine.core.layers.quant import Fp8, Int8
from mgpud.engine.core.prepared import check_model_dir
from mgpud.engine.exceptions import ModelLoadError
from mgpud.engine.planning.planner import param_groups
from oracle import hf_greedy, hf_logprobs

TINY = {"dtype": "float32", "kv_cache_memory": 2 << 20, "max_model_len": 128}
# A 16-token step budget prefills prompts in chunks: the later ones read K/V back from the cache.
CHUNKED = {**TINY, "max_num_batched_tokens": 16}
# Ratios of perplexity to the unquantized load's: the targets. On the demo model and
# LIGHTHOUSE (~1000 tokens; a shorter text measures noise), per-row quantization simulated in
# transformers gives 0.995 (int8, LM head included) and 1.016 (fp8).
PPL_LIMIT = {"int8": 1.01, "fp8": 1.03}
LIGHTHOUSE = Path(__file__).parents[1] / "benchmarks" / "lighthouse.txt"  # the quantization benchmark's text


def _ids(vocab: int, n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(n)]


def _prompt_logprobs(group: ModelGroup, ids: list[int]) -> list[float]:
    out = next(iter(group.stream(ids, params=SamplingParams(max_tokens=1, prompt_logprobs=0))))
    return [e.logprob for e in out.prompt_logprobs[1:]]


def _perplexity(logprobs: list[float]) -> float:
    return math.exp(-sum(logprobs) / len(logprobs))


def _greedy(group: ModelGroup, ids: list[int], n: int) -> list[int]:
    return group.generate([ids], SamplingParams(max_tokens=n, ignore_eos=True))[0][0]


@pytest.fixture(scope="module")
def unquantized(tiny_llama: Path):
    with ModelGroup(EngineConfig(model=str(tiny_llama), **CHUNKED)) as group:
        yield group


def _rows(cfg: ModelConfig) -> int:
    """Output rows of all linear layers and of the LM head (tp=1): one scale each."""
    return cfg.num_layers * ((cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim + 2 * cfg.hidden_size
                             + 2 * cfg.intermediate_size) + cfg.vocab_size


def _quantized(cfg: ModelConfig) -> int:
    """Weights quantized at load: the linear layers' and the LM head's (tied: the embedding's too)."""
    return param_groups(cfg).linear + cfg.vocab_size * cfg.hidden_size


# int8 here, fp8 on the demo model below: both share the loading tested here (whole-row
# scales, so that TP=1 and TP=2 quantize alike). This model is untied: its embedding stays float32.
def test_int8_load_holds_8bit_linear_layers_alike_at_tp1_and_tp2(unquantized: ModelGroup, tiny_llama: Path) -> None:
    cfg = unquantized.model.config
    prompt = _ids(cfg.vocab_size, 40)
    with ModelGroup(EngineConfig(model=str(tiny_llama), quantization="int8", **CHUNKED)) as one:
        weights = one.stats().replicas[0].weight_bytes_per_rank[0]
        logprobs, tokens = _prompt_logprobs(one, prompt), _greedy(one, prompt, 12)
    with ModelGroup(EngineConfig(model=str(tiny_llama), tp=2, quantization="int8", **CHUNKED)) as two:
        assert _greedy(two, prompt, 12) == tokens
    # Each linear and LM head weight now takes one byte, plus a scale per output row in its matmul's dtype.
    full = unquantized.stats().replicas[0].weight_bytes_per_rank[0]
    scale = Int8().scale_dtype(torch.device("cpu"), torch.float32).itemsize
    assert weights == full - 3 * _quantized(cfg) + scale * _rows(cfg)
    ratio = _perplexity(logprobs) / _perplexity(_prompt_logprobs(unquantized, prompt))
    assert 1 / PPL_LIMIT["int8"] < ratio < PPL_LIMIT["int8"]


def test_tied_int8_model_holds_one_8bit_copy_of_its_embedding(tiny_models: dict[str, Path]) -> None:
    model = tiny_models["llama-tied-sharded"]
    cfg = ModelConfig.from_dir(model)
    prompt = _ids(cfg.vocab_size, 40, seed=4)
    with ModelGroup(EngineConfig(model=str(model), quantization="int8", **CHUNKED)) as one:
        weights = one.stats().replicas[0].weight_bytes_per_rank[0]
        logprobs, tokens = _prompt_logprobs(one, prompt), _greedy(one, prompt, 12)
    with ModelGroup(EngineConfig(model=str(model), tp=2, quantization="int8", **CHUNKED)) as two:
        assert _greedy(two, prompt, 12) == tokens
    # The embedding's rows are the LM head's: one byte each, once; only norms stay float32.
    scale = Int8().scale_dtype(torch.device("cpu"), torch.float32).itemsize
    assert cfg.tie_word_embeddings and param_groups(cfg).sharded == cfg.vocab_size * cfg.hidden_size
    assert weights == _quantized(cfg) + scale * _rows(cfg) + 4 * param_groups(cfg).replicated
    # The lookup widens the 8-bit rows it gathers: the outputs stay close to transformers'.
    ref = hf_logprobs(model, prompt)[:-1]
    want = [float(ref[i, t]) for i, t in enumerate(prompt[1:])]
    ratio = _perplexity(logprobs) / _perplexity(want)
    assert 1 / PPL_LIMIT["int8"] < ratio < PPL_LIMIT["int8"]


def test_fp8_kv_cache_holds_more_tokens_and_reads_back_close(unquantized: ModelGroup, tiny_llama: Path) -> None:
    prompt = _ids(unquantized.model.config.vocab_size, 60, seed=1)
    with ModelGroup(EngineConfig(model=str(tiny_llama), kv_cache_dtype="fp8", **CHUNKED)) as fp8:
        blocks = [g.stats().replicas[0].num_kv_blocks for g in (unquantized, fp8)]
        assert blocks[1] == 4 * blocks[0]  # float32 -> 1 byte per value, same KV memory
        ratio = _perplexity(_prompt_logprobs(fp8, prompt)) / _perplexity(_prompt_logprobs(unquantized, prompt))
        assert 1 / 1.03 < ratio < 1.03
        assert _greedy(fp8, prompt, 4) == _greedy(unquantized, prompt, 4)


@pytest.mark.parametrize("method,per_channel,tp", [("compressed-tensors", False, 2), ("fbgemm_fp8", True, 1)],
                         ids=["compressed-tensors-per-tensor-tp2", "fbgemm-per-channel-tp1"])
def test_fp8_checkpoint_matches_transformers_on_its_dequantized_weights(
        tiny_llama: Path, tmp_path: Path, method: str, per_channel: bool, tp: int) -> None:
    reference = tmp_path / "dequantized"
    model = make_fp8_checkpoint(tiny_llama, tmp_path / "fp8", reference, method=method, per_channel=per_channel)
    prompt = _ids(ModelConfig.from_dir(model).vocab_size, 30, seed=2)
    with ModelGroup(EngineConfig(model=str(model), tp=tp, **TINY)) as group:
        got = _prompt_logprobs(group, prompt)
        tokens = _greedy(group, prompt, 8)
    ref = hf_logprobs(reference, prompt)[:-1]
    want = [float(ref[i, t]) for i, t in enumerate(prompt[1:])]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4
    assert tokens == hf_greedy(reference, prompt, 8)[:len(tokens)]


def _with_quantization(tiny_llama: Path, folder: Path, config: dict) -> Path:
    folder.mkdir()
    for file in tiny_llama.iterdir():
        (folder / file.name).symlink_to(file)
    (folder / "config.json").unlink()
    raw = json.loads((tiny_llama / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "quantization_config": config}))
    return folder


@pytest.mark.parametrize("config,named", [
    ({"quant_method": "gptq", "bits": 4}, "quantization gptq"),
    ({"quant_method": "compressed-tensors",
      "config_groups": {"g": {"weights": {"type": "int", "num_bits": 4, "strategy": "group"}}}},
     "compressed-tensors with int 4-bit weights per group"),
])
def test_unsupported_quantization_is_refused_by_name(tiny_llama: Path, tmp_path: Path, config: dict,
                                                     named: str) -> None:
    with pytest.raises(ModelLoadError, match=named) as err:
        check_model_dir(_with_quantization(tiny_llama, tmp_path / "q", config))
    assert "--quantization int8|fp8" in str(err.value)


def test_fp8_checkpoint_cannot_be_loaded_as_int8(tiny_llama: Path, tmp_path: Path) -> None:
    model = _with_quantization(tiny_llama, tmp_path / "q", {"quant_method": "fbgemm_fp8"})
    config = check_model_dir(model)
    assert config.weight_quantization(None) == config.weight_quantization("fp8") == "fp8"
    with pytest.raises(ModelLoadError, match="quantized to fp8 already"):
        ModelGroup(EngineConfig(model=str(model), quantization="int8", **TINY))


@pytest.mark.slow
def test_demo_model_perplexity_under_quantization(demo_model: Path) -> None:
    text = LIGHTHOUSE.read_text()
    # ~1000 prompt tokens at ~46 KB of float32 K/V each, prefilled in one step.
    limits = {"max_model_len": 1024, "kv_cache_memory": 64 << 20}
    perplexity, weights = {}, {}
    for quantization in (None, "int8", "fp8"):
        with ModelGroup(EngineConfig(model=str(demo_model), quantization=quantization, **limits)) as group:
            ids = group.model.tokenizer.encode(text)
            perplexity[quantization] = _perplexity(_prompt_logprobs(group, ids))
            replica = group.stats().replicas[0]
            weights[quantization] = replica.weight_bytes_per_rank[0]
    for quantization, limit in PPL_LIMIT.items():
        assert perplexity[quantization] / perplexity[None] < limit, perplexity
    cfg = group.model.config
    wide = {"float32": 4, "bfloat16": 2}[replica.dtype]  # auto: what this CPU runs best
    # One byte per linear and LM head (= tied embedding) weight, plus a scale per output row (fp8: float32).
    assert weights["fp8"] == weights[None] - (wide - 1) * _quantized(cfg) + 4 * _rows(cfg)


def test_daemon_loads_quantized_and_shows_it(tiny_llama: Path) -> None:
    from mgpud.cli.ps import format_models
    from mgpud.daemon.testing import DaemonProcess
    from mgpud.ipc import BadRequest

    with DaemonProcess(devices="cpu:1") as d, d.client(timeout=30) as c:
        with pytest.raises(BadRequest, match="'quantization' must be one of int8, fp8"):
            c.call("load", model=str(tiny_llama), quantization="int4")
        c.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=1, quantization="int8", kv_cache_dtype="fp8",
               **{k: v for k, v in TINY.items() if k != "dtype"})
        line = c.call("status")["models"][0]
        models = c.call("models")
        text = c.call("generate", model="tiny", prompt=[5, 17, 42], max_tokens=3, ignore_eos=True)
    assert (line["weights"], line["kv_cache_dtype"]) == ("int8", "float8_e4m3fn")
    assert "int8 kv:fp8" in format_models(models)
    assert len(text["token_ids"]) == 3


def test_planner_counts_8bit_weights_and_names_the_flags_that_fit() -> None:
    from mgpud.engine.planning.planner import kv_bytes_per_token, load_model, plan, weight_bytes
    from mgpud.engine.planning.targets import DeviceSet

    cfg = load_model("demo")[0]
    assert weight_bytes(cfg, "fp32", 1) - weight_bytes(cfg, "fp32", 1, "int8") == 3 * _quantized(cfg)
    # An fp8 checkpoint keeps its LM head (here the tied embedding) unquantized.
    checkpoint = dataclasses.replace(cfg, quantization="fp8")
    head = cfg.vocab_size * cfg.hidden_size
    assert weight_bytes(checkpoint, "fp32", 1, "fp8") - weight_bytes(cfg, "fp32", 1, "fp8") == 3 * head
    assert kv_bytes_per_token(cfg, "fp32", 1, "fp8") * 4 == kv_bytes_per_token(cfg, "fp32", 1)
    # No hardware figures: nothing to measure, no throughput estimate.
    ask = {"devices": DeviceSet("cpu:1", "cpu", 1, 720 << 20, None), "max_model_len": 2048, "dtype": "fp32"}
    refused = plan("demo", **ask)
    assert not refused.ok
    assert "`mgpud load demo --quantization int8 --kv-cache-dtype fp8` fits at tp=1" in refused.reasons[-1]
    assert plan("demo", **ask, quantization="int8", kv_cache_dtype="fp8").ok


def _layer(method: object, weight: torch.Tensor) -> torch.nn.Module:
    layer = torch.nn.Module()
    with weight.device:  # as the model runner builds layers: on their device
        method.create(layer, *weight.shape, weight.dtype, None)
    method.store(layer, 0, weight, lambda: weight.float().abs().amax(dim=1))
    return layer


@pytest.mark.gpu
@pytest.mark.parametrize("method", [Int8(), Fp8()], ids=["int8", "fp8"])
def test_cuda_8bit_matmul_matches_its_dequantized_weights(method: object) -> None:
    # fp8 runs torch._scaled_mm on sm_89+ (activations quantized per token), else widens the weight.
    torch.manual_seed(0)
    weight = (torch.randn(256, 128, device="cuda") * 0.05).bfloat16()
    x = torch.randn(5, 128, device="cuda", dtype=torch.bfloat16)
    layer = _layer(method, weight)
    want = x.float() @ (layer.weight.float() * layer.weight_scale.float()[:, None]).T
    got = method.apply(layer, x, None).float()
    assert (got - want).norm() / want.norm() < 0.05


@pytest.mark.gpu
def test_cuda_store_kv_writes_fp8_as_the_reference_does() -> None:
    from mgpud.engine.core.kernels import reference, triton_cache

    key, value = torch.randn(5, 2, 64, device="cuda") * 3, torch.randn(5, 2, 64, device="cuda")
    slots = torch.tensor([17, -1, 0, 31, 5], device="cuda")
    caches = [torch.zeros(3, 16, 2, 64, dtype=torch.float8_e4m3fn, device="cuda") for _ in range(4)]
    reference.store_kv(key, value, caches[0], caches[1], slots)
    triton_cache.store_kv(key, value, caches[2], caches[3], slots)
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(caches[:2], caches[2:]))


@pytest.mark.gpu
def test_cuda_serves_fp8_weights_and_fp8_kv(unquantized: ModelGroup, tiny_llama: Path) -> None:
    prompt = _ids(unquantized.model.config.vocab_size, 40, seed=3)
    cfg = EngineConfig(model=str(tiny_llama), quantization="fp8", kv_cache_dtype="fp8", **CHUNKED)
    with ModelGroup(cfg) as group:
        assert group.stats().replicas[0].devices[0].startswith("cuda")
        ratio = _perplexity(_prompt_logprobs(group, prompt)) / _perplexity(_prompt_logprobs(unquantized, prompt))
        assert len(_greedy(group, prompt, 8)) == 8
    assert 1 / 1.05 < ratio < 1.05
