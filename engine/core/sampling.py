"""Per-request sampling parameters: a typed record built once where a request enters
(the daemon builds it from a request ipc.schema has validated), then trusted inward.
What only the model can tell (the vocabulary) is checked by the serving layer."""

from __future__ import annotations

from dataclasses import dataclass, field


DEFAULT_MAX_TOKENS = 256


@dataclass
class SamplingParams:
    # None: DEFAULT_MAX_TOKENS, or fewer where the context (max_model_len) ends first; a
    # number the context cannot hold is refused by the serving layer.
    max_tokens: int | None = None
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    # None: no log-probabilities; N: each new token's own, with the N likeliest at its position.
    logprobs: int | None = None
    # None: none; N: each prompt token's after the first, given those before it, with the N likeliest.
    prompt_logprobs: int | None = None

    @property
    def token_limit(self) -> int:
        """The most tokens to generate, the context aside."""
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens

    def vocabulary_problem(self, vocab_size: int) -> str | None:
        """What in these parameters this vocabulary cannot honour, if anything."""
        if any(not 0 <= t < vocab_size for t in self.stop_token_ids):
            return f"stop_token_ids must be token ids in [0, {vocab_size})"
        for name in ("logprobs", "prompt_logprobs"):
            if (getattr(self, name) or 0) > vocab_size:
                return f"{name} must be at most the vocabulary size ({vocab_size})"
        return None
