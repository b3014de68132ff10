"""Per-request sampling parameters, checked before a request is queued."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import InvalidRequest


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int = 0  # return this many top log-probabilities per generated token

    @classmethod
    def from_dict(cls, raw: dict) -> SamplingParams:
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidRequest(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        params = cls(**raw)
        params.check()
        return params

    def check(self, vocab_size: int | None = None) -> None:
        problems = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be an integer >= 1 (got {self.max_tokens!r})")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 100:
            problems.append(f"temperature must be a number in [0, 100] (got {self.temperature!r})")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0, 0 meaning no limit (got {self.top_k!r})")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            problems.append(f"seed must be a non-negative integer (got {self.seed!r})")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            problems.append("stop must be a list of non-empty strings")
        if not isinstance(self.stop_token_ids, list) or not all(
                isinstance(t, int) and 0 <= t < (vocab_size or 1 << 62) for t in self.stop_token_ids):
            problems.append("stop_token_ids must be a list of token ids within the vocabulary")
        if not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= (vocab_size or 1 << 62):
            problems.append(f"logprobs must be an integer from 0 to the vocabulary size (got {self.logprobs!r})")
        if problems:
            raise InvalidRequest("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)
