"""The engine against transformers on the same checkpoints: logits, greedy tokens,
batching with chunked prefill, and prefix-cache hits, at TP=1 and TP=2."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from oracle import hf_greedy, hf_logprobs

ARCHS = ["llama", "mistral", "qwen2", "llama-tied-sharded"]


def _prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module", params=[(a, tp) for a in ARCHS for tp in (1, 2)],
                ids=lambda p: f"{p[0]}-tp{p[1]}")
def engine(request: pytest.FixtureRequest, tiny_models: dict[str, Path]):
    arch, tp = request.param
    # A small token budget forces long prompts through several prefill chunks.
    # float32 explicitly: the oracle is transformers in float32, and auto may pick bf16.
    cfg = EngineConfig(model=str(tiny_models[arch]), tp=tp, dtype="float32", max_num_batched_tokens=24,
                       kv_cache_memory=2 << 20, max_model_len=256)
    with ModelGroup(cfg) as eng:
        yield eng


def test_last_token_logits_match_transformers(engine: ModelGroup) -> None:
    vocab = engine.model.config.vocab_size
    prompts = _prompts(vocab, [1, 7, 16, 33, 50])
    streams = [engine.stream(p, params=SamplingParams(max_tokens=1, logprobs=vocab)) for p in prompts]
    for prompt, stream in zip(prompts, streams):
        out = list(stream)[0]
        ours = torch.full((vocab,), float("nan"))
        for token, lp in out.logprobs[0].top:
            ours[token] = lp
        ref = hf_logprobs(engine.model.dir, prompt)[-1]
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_greedy_batch_with_chunked_prefill_matches_generate(engine: ModelGroup) -> None:
    prompts = _prompts(engine.model.config.vocab_size, [3, 12, 29, 45, 60], seed=1)
    results = engine.generate(prompts, SamplingParams(max_tokens=32))
    for prompt, (ids, _, final) in zip(prompts, results):
        assert ids == hf_greedy(engine.model.dir, prompt, 32)
        assert final.finish_reason in ("stop", "length")


def test_shared_prefix_hits_cache_and_matches_generate(engine: ModelGroup) -> None:
    vocab = engine.model.config.vocab_size
    system = _prompts(vocab, [40], seed=2)[0]
    engine.generate([system + [5, 6, 7]], SamplingParams(max_tokens=4))
    hits_before = engine.stats().prefix_cache_hits
    prompts = [system + tail for tail in _prompts(vocab, [4, 9, 17], seed=3)]
    results = engine.generate(prompts, SamplingParams(max_tokens=32))
    assert engine.stats().prefix_cache_hits - hits_before >= 3 * 32  # two full blocks each
    for prompt, (ids, _, _) in zip(prompts, results):
        assert ids == hf_greedy(engine.model.dir, prompt, 32)


def test_rank_holds_its_share_of_weights(engine: ModelGroup) -> None:
    per_rank = engine.stats().replicas[0].weight_bytes_per_rank
    full = sum(t.numel() * t.element_size() for t in
               {p.data_ptr(): p for p in _hf_params(engine.model.dir)}.values())
    tp = engine.config.tp
    for nbytes in per_rank:
        # Norm weights are replicated; they are a few KB here.
        assert full / tp <= nbytes < full / tp * 1.02 + 8192


def _hf_params(model_dir: Path) -> list[torch.Tensor]:
    from oracle import hf_model

    return list(hf_model(model_dir).parameters())
