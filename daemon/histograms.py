"""Request-level figures of finished generations, per model: vLLM's histograms (latencies
and token counts) and finishes by reason. `generation.collect` reads a request's outputs
through `ObservedOutputs`, which observes the request when its last output comes;
`exposition` reads them at scrape time.

The counts are plain lists bumped without locks: only the daemon's loop writes them, and
it is the loop that scrapes (HTTP and the `metrics` operation both run on it). They live
in the process (`FINISHED`), not in a daemon object, because `collect` knows only the
model's name; a process runs one daemon (`server.run_daemon`). A model's series outlive
its unload: histograms are cumulative since the daemon started.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

from mgpud.ipc.schema import MAX_PROMPT_TOKENS

FAILED = ("error", "replica_failed")  # finish reasons collect turns into errors: counted there


def one_two_five(limit: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `limit`: vLLM's buckets for token counts."""
    return tuple(m * 10**e for e in range(len(str(limit))) for m in (1, 2, 5) if m * 10**e <= limit)


# vLLM's bucket boundaries (vllm/v1/metrics/loggers.py), so that its dashboards read ours alike.
FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                       10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_GAP_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                     20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
# vLLM stops at its one model's max_model_len; ours serve several: the protocol's longest prompt.
TOKEN_COUNT_BUCKETS = one_two_five(MAX_PROMPT_TOKENS)


def _span(start: str, end: str) -> Callable[[Any], float | None]:
    """Seconds between two of a RequestOutput's timestamps; None when either is unknown."""
    def seconds(out: Any) -> float | None:
        a, b = getattr(out, start), getattr(out, end)
        return None if a is None or b is None else b - a
    return seconds


def _per_output_token(out: Any) -> float | None:
    decode = _span("first_token_time", "finished_time")(out)
    return decode / (out.completion_tokens - 1) if decode is not None and out.completion_tokens > 1 else None


class Spec(NamedTuple):
    help: str
    buckets: tuple[float, ...]
    value: Callable[[Any], float | None] | None  # from the final RequestOutput; None: observed apart


ITL = "mgpud:inter_token_latency_seconds"
HISTOGRAMS: dict[str, Spec] = {
    "mgpud:time_to_first_token_seconds": Spec(
        "Time from arrival to the first token.", FIRST_TOKEN_BUCKETS, _span("arrival_time", "first_token_time")),
    ITL: Spec("Time between successive tokens as the daemon receives them (vLLM's former "
              "time_per_output_token_seconds).", TOKEN_GAP_BUCKETS, None),
    "mgpud:request_time_per_output_token_seconds": Spec(
        "Per request: decode time over its tokens after the first.", TOKEN_GAP_BUCKETS, _per_output_token),
    "mgpud:e2e_request_latency_seconds": Spec(
        "Time from arrival to the last token.", REQUEST_BUCKETS, _span("arrival_time", "finished_time")),
    "mgpud:request_queue_time_seconds": Spec(
        "Time from arrival to first scheduling.", REQUEST_BUCKETS, _span("arrival_time", "first_scheduled_time")),
    "mgpud:request_inference_time_seconds": Spec(
        "Time from first scheduling to the last token.", REQUEST_BUCKETS,
        _span("first_scheduled_time", "finished_time")),
    "mgpud:request_prefill_time_seconds": Spec(
        "Time from first scheduling to the first token.", REQUEST_BUCKETS,
        _span("first_scheduled_time", "first_token_time")),
    "mgpud:request_decode_time_seconds": Spec(
        "Time from the first token to the last.", REQUEST_BUCKETS, _span("first_token_time", "finished_time")),
    "mgpud:request_prompt_tokens": Spec("Prompt tokens per request.", TOKEN_COUNT_BUCKETS, lambda o: o.prompt_tokens),
    "mgpud:request_generation_tokens": Spec(
        "Tokens generated per request.", TOKEN_COUNT_BUCKETS, lambda o: o.completion_tokens),
}


class Histogram:
    """One series: counts per bucket (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a bucket holds values <= its bound
        self.sum += value


def _histograms() -> dict[str, Histogram]:
    return {name: Histogram(spec.buckets) for name, spec in HISTOGRAMS.items()}


@dataclass
class ModelRequests:
    histograms: dict[str, Histogram] = field(default_factory=_histograms)
    finished: Counter[str] = field(default_factory=Counter)  # finish reason -> requests


FINISHED: dict[str, ModelRequests] = {}  # model name -> its finished generations


def observe(model: str, out: Any, token_times: list[float]) -> None:
    """A finished generation: `out` its final RequestOutput, `token_times` when each of its
    outputs with tokens arrived (time.monotonic())."""
    if out.finish_reason in FAILED:
        return
    requests = FINISHED.get(model) or FINISHED.setdefault(model, ModelRequests())
    requests.finished[out.finish_reason] += 1
    for name, histogram in requests.histograms.items():
        value = HISTOGRAMS[name].value
        if value is not None and (v := value(out)) is not None:
            histogram.observe(v)
    gaps = requests.histograms[ITL]
    for a, b in pairwise(token_times):
        gaps.observe(b - a)


class ObservedOutputs:
    """A request's output queue as `collect` reads it: notes when outputs with tokens
    arrive (a clock read and an append), and observes the request at its last output."""

    def __init__(self, model: str, outputs: asyncio.Queue[Any]) -> None:
        self._model = model
        self._outputs = outputs
        self._token_times: list[float] = []

    async def get(self) -> Any:
        out = await self._outputs.get()
        if out.new_token_ids:
            self._token_times.append(time.monotonic())
        if out.finished:
            observe(self._model, out, self._token_times)
        return out
