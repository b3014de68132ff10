"""Dense Qwen3 and the mixture-of-experts families against transformers (eager, float32):
logits and greedy tokens, with experts TP-sharded and expert parallel, and over two replicas."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from mgpud.engine.exceptions import ModelLoadError
from oracle import hf_greedy, hf_logprobs, hf_model

# (family, tp, expert parallel, dp): every family at tp=1, tp=2 with experts TP-sharded,
# tp=2 expert parallel (MoE families only) and two tp=1 replicas. Qwen2-MoE has a shared
# expert and a dense layer in mlp_only_layers, OLMoE q/k norm over the split projection.
# Two ranks or replicas take > 20 s each on a shared 2-core machine: marked slow.
FAMILIES = ("qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
CASES = [*((family, 1, False, 1) for family in FAMILIES),
         *(pytest.param(case, marks=pytest.mark.slow) for family in FAMILIES for case in
           [(family, 2, False, 1), *([(family, 2, True, 1)] if family != "qwen3" else []), (family, 1, False, 2)])]


def _prompts(vocab: int, lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-tp{c[1]}{'-ep' if c[2] else ''}-dp{c[3]}")
def engine(request: pytest.FixtureRequest, tiny_moe_models: dict[str, Path]):
    arch, tp, ep, dp = request.param
    cfg = EngineConfig(model=str(tiny_moe_models[arch]), tp=tp, dtype="float32", max_num_batched_tokens=24,
                       kv_cache_memory=2 << 20, max_model_len=256, enable_expert_parallel=ep)
    with ModelGroup(cfg, dp) as eng:
        yield eng


def test_logits_match_transformers(engine: ModelGroup) -> None:
    vocab = engine.model.config.vocab_size
    prompts = _prompts(vocab, [1, 9, 40], seed=0)
    streams = [engine.stream(p, params=SamplingParams(max_tokens=1, logprobs=vocab)) for p in prompts]
    for prompt, stream in zip(prompts, streams):
        ours = torch.full((vocab,), float("nan"))
        for token, lp in next(iter(stream)).logprobs[0].top:
            ours[token] = lp
        torch.testing.assert_close(ours, hf_logprobs(engine.model.dir, prompt)[-1], atol=1e-4, rtol=0)


def test_greedy_batch_matches_generate(engine: ModelGroup) -> None:
    prompts = _prompts(engine.model.config.vocab_size, [5, 30], seed=1)
    results = engine.generate(prompts, SamplingParams(max_tokens=32))
    for prompt, (ids, _, _) in zip(prompts, results):
        assert ids == hf_greedy(engine.model.dir, prompt, 32)


def test_rank_holds_its_share_of_experts(engine: ModelGroup) -> None:
    """Each rank holds ~1/tp of the weights in either placement (EP: whole experts)."""
    per_rank = engine.stats().replicas[0].weight_bytes_per_rank
    params = {p.data_ptr(): p for p in hf_model(engine.model.dir).parameters()}.values()
    full = sum(p.numel() * p.element_size() for p in params)
    tp = engine.config.tp
    for nbytes in per_rank:
        # Norms and routers are replicated; they are a few KB here.
        assert full / tp <= nbytes < full / tp * 1.02 + 16384


def test_expert_parallel_is_refused_for_a_dense_model(tiny_moe_models: dict[str, Path]) -> None:
    cfg = EngineConfig(model=str(tiny_moe_models["qwen3"]), tp=2, enable_expert_parallel=True, kv_cache_memory=2 << 20)
    with pytest.raises(ModelLoadError, match="expert parallelism needs a mixture-of-experts model"):
        ModelGroup(cfg)
