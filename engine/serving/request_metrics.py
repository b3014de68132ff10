"""Serving figures kept per replica and per model: token rates over recent seconds and
request latency percentiles over a sliding window of finished requests."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from mgpud.records import LATENCIES, PERCENTILES, RequestFigures

from ..core.outputs import RequestOutput

LATENCY_WINDOW = 1000  # finished requests the percentiles cover
RATE_HORIZON = 10.0  # seconds of token history kept


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of non-empty, sorted `ordered` (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def latency_percentiles(timings: list[Timings]) -> dict[str, float | None]:
    """RequestFigures' latency fields: each latency sorted once, every percentile read off it."""
    latencies: dict[str, float | None] = {}
    for name in LATENCIES:
        ordered = sorted(v for t in timings if (v := getattr(t, name)) is not None)
        for q in PERCENTILES:
            latencies[f"{name}_p{q}_ms"] = percentile(ordered, q) * 1000 if ordered else None
    return latencies


@dataclass
class Timings:
    ttft: float  # seconds from arrival to first token
    tpot: float | None  # seconds per output token after the first
    e2e: float
    queue: float  # arrival to first scheduled

    @classmethod
    def of(cls, out: RequestOutput) -> Timings | None:
        if out.first_token_time is None or out.finished_time is None:
            return None
        decode = out.completion_tokens - 1
        return cls(out.first_token_time - out.arrival_time,
                   (out.finished_time - out.first_token_time) / decode if decode > 0 else None,
                   out.finished_time - out.arrival_time,
                   (out.first_scheduled_time or out.first_token_time) - out.arrival_time)


class ServingMetrics:
    """Thread-safe: outputs arrive on engine threads, readers are anywhere."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: deque[tuple[float, int]] = deque()
        self._timings: deque[Timings] = deque(maxlen=LATENCY_WINDOW)
        self.finished = 0
        self.failed = 0
        # The percentiles as of `finished` requests: status and telemetry read them many
        # times a second, and they change only when a request finishes.
        self._latencies: tuple[int, dict[str, float | None]] | None = None

    def on_output(self, out: RequestOutput) -> None:
        now = time.monotonic()
        with self._lock:
            if out.new_token_ids:
                self._tokens.append((now, len(out.new_token_ids)))
            while self._tokens and self._tokens[0][0] < now - RATE_HORIZON:
                self._tokens.popleft()
            if out.finished:
                self.finished += 1
                self.failed += out.finish_reason in ("error", "replica_failed")
                timings = Timings.of(out)
                if timings:
                    self._timings.append(timings)

    def tokens_per_second(self, seconds: float) -> float:
        since = time.monotonic() - seconds
        with self._lock:
            return sum(n for t, n in self._tokens if t >= since) / seconds

    def snapshot(self) -> RequestFigures:
        with self._lock:
            finished, cached = self.finished, self._latencies
            timings = list(self._timings) if cached is None or cached[0] != finished else None
        if timings is None:
            latencies = cached[1]
        else:
            latencies = latency_percentiles(timings)
            with self._lock:
                self._latencies = (finished, latencies)
        return RequestFigures(tokens_per_s_1s=self.tokens_per_second(1.0),
                              tokens_per_s_10s=self.tokens_per_second(RATE_HORIZON),
                              requests_finished=finished, requests_failed=self.failed, **latencies)
