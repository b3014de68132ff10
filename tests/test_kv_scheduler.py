"""Block manager and scheduler in isolation: prefix reuse, chunking, preemption, limits."""

from __future__ import annotations

from mgpud.engine.core.kv import BlockManager
from mgpud.engine.core.sampling import SamplingParams
from mgpud.engine.core.scheduler import Limits, Scheduler
from mgpud.engine.core.sequence import Sequence
from mgpud.engine.core.tokenizer import Detokenizer


def _seq(rid: str, tokens: list[int], max_tokens: int = 8) -> Sequence:
    return Sequence(rid, list(tokens), len(tokens), SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                    frozenset())


def _run_step(s: Scheduler, token: int = 1) -> list[tuple[Sequence, int]]:
    batch = s.schedule()
    sampling = [seq for seq, n in batch if seq.num_computed_tokens + n == seq.num_tokens]
    s.update(batch, [token] * len(sampling))
    return batch


def test_prefix_blocks_are_shared_verified_and_survive_release() -> None:
    bm = BlockManager(8, 4)
    a = _seq("a", range(10))
    bm.allocate(a, 10)
    a.num_computed_tokens = 10
    bm.commit(a)
    assert len(a.block_hashes) == 2  # the third block is partial
    bm.release(a)
    b = _seq("b", list(range(8)) + [99, 98, 97])
    cached = bm.match_prefix(b)
    assert len(cached) == 2
    bm.admit(b, cached)
    assert b.num_computed_tokens == 8 and bm.prefix_hits == 8
    c = _seq("c", [0, 1, 2, 3, 7, 7, 7, 7, 1])  # same first block only
    assert len(bm.match_prefix(c)) == 1


def test_whole_cached_prompt_still_computes_its_last_token() -> None:
    bm = BlockManager(8, 4)
    a = _seq("a", range(8))
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.commit(a)
    bm.release(a)
    assert len(bm.match_prefix(_seq("b", range(8)))) == 1


def test_chunked_prefill_respects_token_budget_and_puts_decodes_first() -> None:
    s = Scheduler(Limits(max_num_seqs=8, max_num_batched_tokens=10, max_model_len=64), BlockManager(32, 4))
    s.add(_seq("long", range(25)))
    assert [n for _, n in _run_step(s)] == [10]
    s.add(_seq("short", range(3)))
    batch = _run_step(s)
    assert [(q.request_id, n) for q, n in batch] == [("long", 10)]
    batch = _run_step(s)
    assert [(q.request_id, n) for q, n in batch] == [("long", 5), ("short", 3)]
    batch = s.schedule()
    assert [(q.request_id, n) for q, n in batch] == [("long", 1), ("short", 1)]


def test_max_num_seqs_caps_running() -> None:
    s = Scheduler(Limits(max_num_seqs=2, max_num_batched_tokens=100, max_model_len=64), BlockManager(32, 4))
    for i in range(4):
        s.add(_seq(f"r{i}", [1, 2, 3]))
    assert len(s.schedule()) == 2 and len(s.waiting) == 2


def test_out_of_blocks_preempts_newest_and_recomputes_it() -> None:
    s = Scheduler(Limits(max_num_seqs=8, max_num_batched_tokens=100, max_model_len=64), BlockManager(4, 4))
    s.add(_seq("old", range(7), max_tokens=20))
    s.add(_seq("new", range(10, 17), max_tokens=20))
    while s.num_preemptions == 0:
        _run_step(s)
    assert [q.request_id for q in s.running] == ["old"]
    assert s.waiting[0].request_id == "new" and s.waiting[0].num_computed_tokens == 0
    assert s.waiting[0].num_output_tokens > 0  # generated tokens are kept and recomputed


def test_cancel_releases_blocks() -> None:
    bm = BlockManager(8, 4)
    s = Scheduler(Limits(8, 100, 64), bm)
    s.add(_seq("x", range(9)))
    _run_step(s)
    assert bm.num_free < 8
    assert s.cancel("x") is not None
    assert bm.num_free == 8 and not s.has_work()


class _ByteTokenizer:
    """Each token is one UTF-8 byte: a multi-byte character spans tokens."""

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_detokenizer_never_splits_a_character() -> None:
    text = "naïve café ☕ 😀 done"
    detok = Detokenizer(_ByteTokenizer(), [])
    pieces = [detok.push([b]) for b in text.encode()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_blocks_are_allocated_as_chunks_are_scheduled() -> None:
    # As in vLLM v1: a long prompt holds blocks for the chunks computed so far, not for the
    # whole prompt, so it cannot crowd out sequences admitted while it is still prefilling.
    bm = BlockManager(32, 4)
    s = Scheduler(Limits(max_num_seqs=8, max_num_batched_tokens=10, max_model_len=64), bm)
    s.add(_seq("long", range(25)))
    held = []
    for _ in range(3):
        _run_step(s)
        held.append(len(s.running[0].block_table))
    assert held == [3, 5, 7]  # 10, 20, then all 25 tokens (and the first sampled one's slot later)
