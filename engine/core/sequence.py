"""A request as rank 0's scheduler sees it: tokens, KV blocks, progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import torch

from .outputs import TokenLogprob
from .sampling import SamplingParams


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    eos_ids: frozenset[int]
    status: Status = Status.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # of the full, computed blocks
    generator: torch.Generator | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    num_preemptions: int = 0
    # Collected over the prefill chunks while incomplete; None when not asked for or once sent.
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None]  # the first token has nothing before it

    def prompt_logprob_positions(self, n: int) -> range:
        """Positions among the next n to compute whose logits give a prompt logprob still missing
        (position p gives token p + 1's; a recompute after preemption skips those it has)."""
        if self.prompt_logprobs is None:
            return range(0)
        start = max(self.num_computed_tokens, len(self.prompt_logprobs) - 1)
        return range(start, min(self.num_computed_tokens + n, self.num_prompt_tokens - 1))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def mark_scheduled(self) -> None:
        if self.first_scheduled_time is None:
            self.first_scheduled_time = time.monotonic()

    def finish_reason(self, token: int, max_model_len: int) -> str | None:
        """Why this sequence stops after appending `token`, or None to go on."""
        p = self.params
        if (token in self.eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if self.num_output_tokens >= p.token_limit or self.num_tokens >= max_model_len:
            return "length"
        return None
