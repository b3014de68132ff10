"""Request latency figures: nearest-rank percentiles over finished requests, current after
every finish however often they are read."""

from __future__ import annotations

from pytest import approx

from mgpud.engine.core.outputs import RequestOutput
from mgpud.engine.serving.request_metrics import ServingMetrics


def finished(ttft: float) -> RequestOutput:
    return RequestOutput("r", new_token_ids=[1], finished=True, finish_reason="length", completion_tokens=3,
                         arrival_time=100.0, first_scheduled_time=100.0, first_token_time=100.0 + ttft,
                         finished_time=100.0 + ttft + 0.2)


def test_percentiles_follow_each_finished_request() -> None:
    metrics = ServingMetrics()
    assert metrics.snapshot().ttft_p50_ms is None
    for ttft in (0.4, 0.1, 0.3, 0.2, 0.5):
        metrics.on_output(finished(ttft))
    first = metrics.snapshot()
    assert (first.ttft_p50_ms, first.ttft_p99_ms) == approx((300.0, 500.0))
    assert first.tpot_p50_ms == approx(100.0) and first.requests_finished == 5
    assert metrics.snapshot() == first  # read again: the same figures
    metrics.on_output(finished(2.0))
    after = metrics.snapshot()
    assert after.ttft_p99_ms == approx(2000.0) and after.requests_finished == 6
