"""Log-probabilities against transformers: of prompt tokens (computed in the prefill's own
forward pass, chunked or not, at TP=1 and TP=2) and of sampled tokens; plus the
bookkeeping that makes prompt logprobs cover every position exactly once."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from mgpud.engine.core.batch import build_step
from mgpud.engine.core.kv import BlockManager
from mgpud.engine.core.outputs import RequestOutput, TokenLogprob
from mgpud.engine.core.sequence import Sequence
from oracle import hf_logprobs

BUDGET = 24  # max_num_batched_tokens: longer prompts are prefilled over several steps


def _prompts(vocab: int, lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module", params=[1, 2], ids=lambda tp: f"tp{tp}")
def engine(request: pytest.FixtureRequest, tiny_llama: Path):
    cfg = EngineConfig(model=str(tiny_llama), tp=request.param, dtype="float32", max_num_batched_tokens=BUDGET,
                       kv_cache_memory=2 << 20, max_model_len=256)
    with ModelGroup(cfg) as eng:
        yield eng


def _check(got: list[TokenLogprob], ids: list[int], ref: torch.Tensor, top: int) -> None:
    """got[i] is ids[i]'s entry, and ref[i] the oracle's log-probabilities at its position."""
    assert [e.token_id for e in got] == ids
    assert all(len(e.top) == top for e in got)
    torch.testing.assert_close(torch.tensor([e.logprob for e in got]), ref[range(len(ids)), ids], atol=1e-4, rtol=0)
    values, order = ref.topk(top, dim=-1)
    assert [[t for t, _ in e.top] for e in got] == order.tolist()
    ours = torch.tensor([[lp for _, lp in e.top] for e in got]).reshape(values.shape)  # [] when got is
    torch.testing.assert_close(ours, values, atol=1e-4, rtol=0)


def _check_prompt(model_dir: Path, prompt: list[int], got: list[TokenLogprob | None] | None, top: int) -> None:
    assert got is not None and len(got) == len(prompt) and got[0] is None
    _check(got[1:], prompt[1:], hf_logprobs(model_dir, prompt)[:-1], top)


def _outputs(engine: ModelGroup, prompt: list[int], **params: object) -> list[RequestOutput]:
    return list(engine.stream(prompt, params=SamplingParams(**params)))


def test_prompt_logprobs_match_transformers_chunked_and_batched(engine: ModelGroup) -> None:
    prompts = _prompts(engine.model.config.vocab_size, [1, 2, 20, 61], seed=4)  # 61 tokens: three chunks
    plain = engine.stream(prompts[3], params=SamplingParams(max_tokens=3))  # asks nothing, in the same steps
    streams = [engine.stream(p, params=SamplingParams(max_tokens=3, prompt_logprobs=3)) for p in prompts]
    for prompt, stream in zip(prompts, streams):
        outs = list(stream)
        _check_prompt(engine.model.dir, prompt, outs[0].prompt_logprobs, 3)
        assert all(o.prompt_logprobs is None and o.logprobs is None for o in outs[1:])
    assert all(o.prompt_logprobs is None and o.logprobs is None for o in plain)


def test_sampled_logprobs_match_transformers(engine: ModelGroup) -> None:
    prompt = _prompts(engine.model.config.vocab_size, [9], seed=5)[0]
    for params in ({}, {"temperature": 5.0, "seed": 3}):
        outs = _outputs(engine, prompt, max_tokens=8, ignore_eos=True, logprobs=2, **params)
        ids = [t for o in outs for t in o.new_token_ids]
        got = [lp for o in outs for lp in o.logprobs]
        ref = hf_logprobs(engine.model.dir, prompt + ids)[len(prompt) - 1:-1]
        _check(got, ids, ref, 2)
        if not params:  # greedy: the token is the likeliest
            assert [e.top[0][0] for e in got] == ids
        else:  # sampled at a high temperature: tokens outside the top-2 still have their logprob
            assert any(t not in dict(e.top) for t, e in zip(ids, got))


def test_zero_top_still_gives_each_tokens_logprob(engine: ModelGroup) -> None:
    prompt = _prompts(engine.model.config.vocab_size, [5], seed=6)[0]
    outs = _outputs(engine, prompt, max_tokens=2, logprobs=0, prompt_logprobs=0)
    _check_prompt(engine.model.dir, prompt, outs[0].prompt_logprobs, 0)
    assert [len(o.logprobs[0].top) for o in outs] == [0, 0]


def test_prompt_logprobs_skip_the_prefix_cache(engine: ModelGroup) -> None:
    prompt = _prompts(engine.model.config.vocab_size, [50], seed=7)[0]
    _outputs(engine, prompt, max_tokens=1)
    hits = engine.stats().prefix_cache_hits
    _outputs(engine, prompt, max_tokens=1)
    assert engine.stats().prefix_cache_hits > hits  # the prefix is cached...
    hits = engine.stats().prefix_cache_hits
    outs = _outputs(engine, prompt, max_tokens=1, prompt_logprobs=1)
    assert engine.stats().prefix_cache_hits == hits  # ...and not taken by a request that needs every position
    _check_prompt(engine.model.dir, prompt, outs[0].prompt_logprobs, 1)


def test_vocabulary_bounds_both_counts() -> None:
    assert SamplingParams(logprobs=0, prompt_logprobs=512).vocabulary_problem(512) is None
    assert "prompt_logprobs" in SamplingParams(prompt_logprobs=513).vocabulary_problem(512)
    assert "logprobs" in SamplingParams(logprobs=513).vocabulary_problem(512)


def _seq(n: int, **params: object) -> Sequence:
    return Sequence("r", list(range(3, 3 + n)), n, SamplingParams(**params), frozenset())


def test_prompt_positions_cover_the_prompt_once_across_chunks_and_recompute() -> None:
    seq = _seq(40, prompt_logprobs=1)
    assert seq.prompt_logprob_positions(24) == range(24)
    seq.prompt_logprobs += [None] * 24  # what the first chunk recorded
    seq.num_computed_tokens = 24
    assert seq.prompt_logprob_positions(16) == range(24, 39)  # the last position samples instead
    seq.num_computed_tokens = 0  # preempted: computed again from the start
    assert len(seq.prompt_logprob_positions(24)) == 0
    assert seq.prompt_logprob_positions(30) == range(24, 30)
    assert len(_seq(40).prompt_logprob_positions(40)) == 0


def test_step_asks_logits_for_prompt_rows_and_no_prefix_blocks() -> None:
    blocks = BlockManager(16, 4)
    done = _seq(9)
    blocks.allocate(done, 9)
    done.num_computed_tokens = 9
    blocks.commit(done)
    decoding, asking = _seq(5), _seq(9, prompt_logprobs=0)
    assert blocks.match_prefix(_seq(9)) and not blocks.match_prefix(asking)
    blocks.allocate(decoding, 5)
    blocks.allocate(asking, 6)
    decoding.num_computed_tokens = 4
    step = build_step([(decoding, 1), (asking, 6)], 4)
    assert step.logits_indices.tolist() == [0]  # only the decode samples this step
    assert np.array_equal(step.prompt_logits_indices, np.arange(1, 7))  # the chunk's six positions
