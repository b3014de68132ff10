"""What a user of the engine relies on beyond correct tokens: preemption under a small
KV budget, cancellation, sampling options, stop strings, and clear errors."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from mgpud.engine import (EngineConfig, InvalidRequest, ModelGroup, ModelLoadError, SamplingParams)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 300) for _ in range(rng.randrange(5, 40))] for _ in range(n)]


@pytest.fixture(scope="module")
def engine(tiny_llama: Path):
    with ModelGroup(EngineConfig(model=str(tiny_llama), dtype="float32", max_model_len=128,
                                  kv_cache_memory=2 << 20)) as eng:
        yield eng


def test_small_kv_budget_preempts_and_still_matches(tiny_llama: Path, engine: ModelGroup) -> None:
    prompts = _prompts(12)
    params = SamplingParams(max_tokens=48, ignore_eos=True)
    expected = [ids for ids, _, _ in engine.generate(prompts, params)]
    block_bytes = 2 * 2 * 2 * 16 * 16 * 4  # K+V, 2 layers, 2 kv heads, head 16, 16 tokens, fp32
    tight = EngineConfig(model=str(tiny_llama), dtype="float32", max_model_len=128, kv_cache_memory=12 * block_bytes)
    with ModelGroup(tight) as small:
        assert small.stats().replicas[0].num_kv_blocks == 12
        got = [ids for ids, _, _ in small.generate(prompts, params)]
        assert small.stats().preemptions > 0
    assert got == expected


def test_cancel_frees_blocks_at_once(engine: ModelGroup) -> None:
    stream = engine.stream([5, 6, 7], params=SamplingParams(max_tokens=100, ignore_eos=True))
    first = next(iter(stream))
    assert not first.finished
    assert engine.cancel(stream.request_id)
    outputs = list(stream)
    assert outputs[-1].finish_reason == "cancelled"
    # The next request runs alone, so the blocks in use are its own.
    ids, _, _ = engine.stream([9, 9], params=SamplingParams(max_tokens=2, ignore_eos=True)).result()
    assert len(ids) == 2
    assert engine.stats().running == 0 and engine.stats().kv_blocks_used == 0


def test_seeded_sampling_repeats_and_differs_from_greedy(engine: ModelGroup) -> None:
    prompt = [11, 12, 13, 14]
    params = SamplingParams(max_tokens=24, temperature=1.5, top_p=0.95, top_k=50, seed=7, ignore_eos=True)
    a, _, _ = engine.stream(prompt, params=params).result()
    b, _, _ = engine.stream(prompt, params=params).result()
    greedy, _, _ = engine.stream(prompt, params=SamplingParams(max_tokens=24, ignore_eos=True)).result()
    assert a == b
    assert a != greedy


def test_top_k_one_is_greedy(engine: ModelGroup) -> None:
    prompt = [20, 21, 22]
    sampled, _, _ = engine.stream(prompt, params=SamplingParams(
        max_tokens=16, temperature=1.0, top_k=1, ignore_eos=True)).result()
    greedy, _, _ = engine.stream(prompt, params=SamplingParams(max_tokens=16, ignore_eos=True)).result()
    assert sampled == greedy


def test_stop_string_and_stop_token(engine: ModelGroup) -> None:
    prompt = "the quick brown fox"
    ids, text, _ = engine.stream(prompt, params=SamplingParams(max_tokens=40, ignore_eos=True)).result()
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), f"need visible text to stop on, got {text!r}"
    _, cut, final = engine.stream(prompt, params=SamplingParams(
        max_tokens=40, ignore_eos=True, stop=[stop])).result()
    assert final.finish_reason == "stop"
    assert cut == text[:text.index(stop)]
    ids2, _, final2 = engine.stream(prompt, params=SamplingParams(
        max_tokens=40, ignore_eos=True, stop_token_ids=[ids[5]])).result()
    assert final2.finish_reason == "stop" and ids2 == ids[:ids.index(ids[5]) + 1]


def test_streamed_text_equals_decoded_tokens(engine: ModelGroup) -> None:
    stream = engine.stream("hello there", params=SamplingParams(max_tokens=30, ignore_eos=True))
    pieces, ids = [], []
    for out in stream:
        pieces.append(out.new_text)
        ids.extend(out.new_token_ids)
        assert "\ufffd" not in out.new_text
    assert "".join(pieces) == engine.model.tokenizer.decode(ids)
    assert out.completion_tokens == 30 and out.finish_reason == "length"
    assert out.arrival_time <= out.first_scheduled_time <= out.first_token_time <= out.finished_time


def test_chat_messages_use_the_template(engine: ModelGroup) -> None:
    messages = [{"role": "user", "content": "hi"}]
    stream = engine.stream(messages=messages, params=SamplingParams(max_tokens=3))
    _, _, final = stream.result()
    expected = engine.model.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", special=False)
    assert final.prompt_tokens == len(expected)


@pytest.mark.parametrize("kwargs, words", [
    ({"prompt": list(range(3, 140))}, "max_model_len"),
    ({"prompt": [1, 10**9]}, "token ids"),
    ({"prompt": ""}, "empty"),
    ({"prompt": [1, 2], "params": SamplingParams(stop_token_ids=[10**9])}, "stop_token_ids"),
    ({"prompt": [1, 2], "params": SamplingParams(logprobs=10**9)}, "logprobs"),
])
def test_bad_requests_are_refused_and_engine_keeps_serving(engine: ModelGroup, kwargs, words) -> None:
    with pytest.raises(InvalidRequest, match=words):
        engine.stream(**kwargs)
    ids, _, _ = engine.stream([4, 5], params=SamplingParams(max_tokens=3, ignore_eos=True)).result()
    assert len(ids) == 3


def test_impossible_tp_names_valid_degrees(tiny_llama: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"tp=3 does not divide.*shapes that would work: tp=1 dp=1"):
        ModelGroup(EngineConfig(model=str(tiny_llama), tp=3))


@pytest.mark.parametrize("missing, words", [
    ("tokenizer.json", "tokenizer.json"), ("config.json", "config.json"), ("model.safetensors", "safetensors")])
def test_missing_file_is_named(tiny_llama: Path, tmp_path: Path, missing: str, words: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / missing).unlink()
    with pytest.raises(ModelLoadError, match=words):
        ModelGroup(EngineConfig(model=str(broken)))


def test_unsupported_architecture_lists_supported(tiny_llama: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama, odd)
    cfg = (odd / "config.json").read_text().replace("LlamaForCausalLM", "GPT2LMHeadModel")
    (odd / "config.json").write_text(cfg)
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        ModelGroup(EngineConfig(model=str(odd)))


def test_kv_too_small_for_one_sequence_says_what_to_turn(tiny_llama: Path) -> None:
    with pytest.raises(ModelLoadError, match="sequence needs 256.0 KiB of KV cache per device.*lower max_model_len"):
        ModelGroup(EngineConfig(model=str(tiny_llama), max_model_len=512, kv_cache_memory=64 << 10))
