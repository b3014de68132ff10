"""The charts the advice sits beside, a loading model's phase, and the daemon's advice on
the dashboard (fake telemetry, no daemon; the rules are tested in test_advice.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from mgpud.advice import advise
from mgpud.records import LoadProgress, ModelRecord, to_wire
from mgpud.tui import render
from mgpud.tui.app import MgpudTop
from mgpud.tui.state import load_phase
from test_advice import FLAT, RISING, devices, series, smol
from test_tui_snapshots import telemetry
from waiting import until

def test_charts_draw_on_a_fixed_scale_and_idle_is_empty() -> None:
    assert render.chart([0.0] * 50, 10, 3, 1.0) == [" " * 10] * 3
    assert render.chart([50.0, 100.0], 4, 1, 100.0) == ["  ▄█"]  # newest at the right, half and full
    assert render.chart([100.0], 2, 2, 100.0) == [" █", " █"]
    assert render.chart([0.1], 1, 1, 100.0) == ["▁"]  # anything above zero shows
    assert render.chart([1.0, 0.0, 0.0, 0.0], 2, 1, 1.0) == ["█ "]  # a column keeps its run's peak
    assert [render.nice_top(p) for p in (0, 0.3, 7, 124, 500, 501)] == [1, 0.5, 10, 200, 500, 1000]


def test_a_loading_model_shows_its_phase_and_percent() -> None:
    loading = ModelRecord(name="tiny", model="/m", state="loading", tp=1, dp=1,
                          progress=LoadProgress(phase="load", bytes_done=45, bytes_total=100))
    assert load_phase(loading) == "load 45%"
    assert load_phase(replace(loading, progress=LoadProgress(phase="profile"))) == "profile"
    assert load_phase(replace(loading, progress=None)) is None
    assert load_phase(smol()) is None


class OverloadedClient:
    """Telemetry of two minutes in which smol's TTFT p95 climbs while its tokens/s stays flat,
    with the daemon's advice on it at the end."""

    runtime_dir = Path("/run/mgpud")

    async def events(self, topics: tuple[str, ...] = ("",)) -> AsyncIterator[dict[str, Any]]:
        for i in range(len(FLAT)):
            data = telemetry(0)
            model = smol()
            model.stats = replace(model.stats, tokens_per_s_10s=FLAT[i], ttft_p95_ms=RISING[i])  # type: ignore[arg-type]
            model.advice = advise(model, series(FLAT[:i + 1], RISING[:i + 1]), devices())
            data["models"], data["devices"] = [to_wire(model)], [to_wire(d) for d in devices()]
            data["daemon"]["uptime_s"] = float(i)
            yield {"topic": "telemetry", "time": float(i), "data": data}
        await asyncio.Event().wait()

    async def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        raise AssertionError(op)

    async def close(self) -> None:
        pass


def test_the_dashboard_shows_the_advice_with_its_command() -> None:
    async def go() -> None:
        app = MgpudTop(OverloadedClient())  # type: ignore[arg-type]
        async with app.run_test(size=(120, 40)) as pilot:
            advice = app.screen_stack[0].query_one("#advice")
            await until(pilot, lambda: advice.display, "the advice", timeout=30)
            await pilot.pause()
            shown = str(advice.render())
            assert "smol: TTFT p95 rose" in shown and "mgpud scale smol --dp 3" in shown
            assert advice.region.width == 120 and advice.region.height >= 2  # the sentence wraps, whole
    asyncio.run(go())
