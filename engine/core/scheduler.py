"""Continuous batching on rank 0: FCFS, chunked prefill mixed into decode steps under
`max_num_batched_tokens` and `max_num_seqs`, preemption by recompute when KV blocks run
out (the newest running sequence gives its blocks back and is computed again later).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .kv import BlockManager
from .sequence import Sequence, Status


@dataclass(frozen=True)
class Limits:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


@dataclass
class Finished:
    seq: Sequence
    reason: str


class Scheduler:
    def __init__(self, limits: Limits, blocks: BlockManager):
        self.limits = limits
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def cancel(self, request_id: str) -> Sequence | None:
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    self._finish(seq)
                    return seq
        return None

    def schedule(self) -> list[tuple[Sequence, int]]:
        """(sequence, tokens to compute) for the next step; single-token entries first."""
        budget = self.limits.max_num_batched_tokens
        batch: list[tuple[Sequence, int]] = []
        preemptions = self.num_preemptions
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed, budget)
            if not self._reserve(seq, n):
                break  # seq itself went back to the queue, and it was the last one running
            batch.append((seq, n))
            budget -= n
            i += 1
        # After a preemption, admitting new work would only evict it again.
        if self.num_preemptions == preemptions:
            self._admit(batch, budget)
        batch.sort(key=lambda entry: entry[1] != 1)
        for seq, _ in batch:
            seq.mark_scheduled()
        return batch

    def _reserve(self, seq: Sequence, n: int) -> bool:
        """Blocks for n more tokens of a running seq, evicting the newest others if needed."""
        while not self.blocks.can_allocate(seq, n):
            victim = self.running.pop()
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.allocate(seq, n)
        return True

    def _admit(self, batch: list[tuple[Sequence, int]], budget: int) -> None:
        bs = self.blocks.block_size
        while self.waiting and budget > 0 and len(self.running) < self.limits.max_num_seqs:
            seq = self.waiting[0]
            cached = self.blocks.match_prefix(seq)
            n = min(seq.num_tokens - len(cached) * bs, budget)
            if not self.blocks.can_allocate(seq, n, cached):
                break
            self.waiting.popleft()
            self.blocks.admit(seq, cached)
            self.blocks.allocate(seq, n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.append((seq, n))
            budget -= n

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _finish(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        seq.status = Status.FINISHED

    def update(self, batch: list[tuple[Sequence, int]], sampled: list[int]) -> list[Finished]:
        """Account a finished step: `sampled` holds one token per sampling entry, in order."""
        done: list[Finished] = []
        tokens = iter(sampled)
        for seq, n in batch:
            samples = seq.num_computed_tokens + n == seq.num_tokens
            seq.num_computed_tokens += n
            self.blocks.commit(seq)
            if not samples:
                continue
            token = next(tokens)
            seq.token_ids.append(token)
            reason = seq.finish_reason(token, self.limits.max_model_len)
            if reason:
                self.running.remove(seq)
                self._finish(seq)
                done.append(Finished(seq, reason))
        return done
