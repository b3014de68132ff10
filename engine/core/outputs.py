"""What the owner of an engine receives for each request, and the per-request state
(detokenization, stop strings) that produces it."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .sampling import SamplingParams
from .tokenizer import Detokenizer


@dataclass
class TokenLogprob:
    """One token's log-probability given the tokens before it, and the likeliest there."""

    token_id: int
    logprob: float  # natural log, from the model's distribution before any sampling filter
    top: list[tuple[int, float]]  # (token id, logprob), most likely first


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "cancelled", "error"
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    arrival_time: float = 0.0  # time.monotonic() of every process on this host
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    logprobs: list[TokenLogprob] | None = None  # one per new token, when asked for
    # When asked for, on the request's first output only: one per prompt token, the first None,
    # and the prompt's token ids they belong to.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_token_ids: list[int] | None = None


class RequestStream:
    """Iterate a request's outputs until the finished one (ModelGroup.stream)."""

    request_id: str = ""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()

    def put(self, out: RequestOutput) -> None:
        self._queue.put(out)

    def __iter__(self) -> Iterator[RequestOutput]:
        while True:
            out = self._queue.get()
            yield out
            if out.finished:
                return

    def result(self) -> tuple[list[int], str, RequestOutput]:
        """Wait for the end: (all token ids, all text, the final output)."""
        ids, text = [], []
        for out in self:
            ids.extend(out.new_token_ids)
            text.append(out.new_text)
        return ids, "".join(text), out


class RequestState:
    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                 detokenizer: Detokenizer, sink: Callable[[RequestOutput], None]):
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.detok = detokenizer
        self.sink = sink
        self.arrival = time.monotonic()
        self.completion_tokens = 0
        self.text = ""  # all text produced so far
        self.sent = 0  # characters of text already emitted
        self.holdback = max((len(s) for s in params.stop), default=1) - 1
        self.first_scheduled: float | None = None
        self.first_token: float | None = None

    def on_token(self, token: int, reason: str | None, scheduled: float, first: float,
                 logprob: TokenLogprob | None = None,
                 prompt_logprobs: list[TokenLogprob | None] | None = None) -> str | None:
        """Emit the output for one new token; returns "stop" when a stop string ended it."""
        self.first_scheduled, self.first_token = scheduled, first
        self.completion_tokens += 1
        self.text += self.detok.push([token])
        cut = self._stop_at()
        if cut is not None:
            self.text, reason = self.text[:cut], "stop"
        self._emit([token], reason, logprobs=None if logprob is None else [logprob], prompt_logprobs=prompt_logprobs)
        return "stop" if cut is not None else None

    def _stop_at(self) -> int | None:
        start = max(0, self.sent - self.holdback)
        hits = [i for i in (self.text.find(s, start) for s in self.params.stop) if i >= 0]
        return min(hits) if hits else None

    def _emit(self, tokens: list[int], reason: str | None, error: str | None = None,
              logprobs: list[TokenLogprob] | None = None,
              prompt_logprobs: list[TokenLogprob | None] | None = None) -> None:
        end = len(self.text) if reason else max(self.sent, len(self.text) - self.holdback)
        if logprobs is None and self.params.logprobs is not None:
            logprobs = []  # asked for, and this output brings no token: say so with an empty list
        out = RequestOutput(
            self.request_id, tokens, self.text[self.sent:end], reason is not None, reason, error,
            len(self.prompt_ids), self.completion_tokens, self.arrival, self.first_scheduled,
            self.first_token, time.monotonic() if reason else None, logprobs, prompt_logprobs,
            None if prompt_logprobs is None else self.prompt_ids)
        self.sent = end
        self.sink(out)

    def finish(self, reason: str, error: str | None = None) -> None:
        self._emit([], reason, error)
