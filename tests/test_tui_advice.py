"""The scaling advisor's rules on synthetic figure series, the charts it sits beside, a
loading model's phase, and the advice on the dashboard (fake telemetry, no daemon)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from mgpud.records import Device, LoadProgress, ModelFigures, ModelRecord, from_wire, to_wire
from mgpud.tui import render
from mgpud.tui.advice import WINDOW, advise
from mgpud.tui.app import MgpudTop
from mgpud.tui.state import Series, load_phase
from test_tui_snapshots import GiB, device, replica, telemetry
from waiting import until

RISING = tuple(100.0 + 300.0 * i / WINDOW for i in range(WINDOW))  # TTFT p95 from 100 to 400 ms
FLAT = tuple(110.0 + (i % 3) for i in range(WINDOW))  # tokens/s steady around 110


def smol(waiting: int = 0, kv_used: int = 700, idle_replica: bool = False) -> ModelRecord:
    replicas = [replica(0, "cpu:0", 4, 600, 66.0, 90.0), replica(1, "cpu:1", 0 if idle_replica else 2, 100, 44, 70.0)]
    replicas[0] = replace(replicas[0], waiting=waiting)
    stats = ModelFigures(name="smol", tp=1, dp=2, max_model_len=2048, running=6, waiting=waiting,
                         kv_blocks_used=kv_used, kv_blocks_total=2000, tokens_per_s_10s=110.0, ttft_p95_ms=400.0,
                         replicas=replicas)
    return ModelRecord(name="smol", model="demo", state="ready", tp=1, dp=2, devices=["cpu:0", "cpu:1"], stats=stats)


def devices(free_device: bool = True, full: bool = False) -> tuple[Device, ...]:
    held = [from_wire(Device, device(i, "smol", i, 538 << 20, (3 * GiB if full else GiB), 0)) for i in (0, 1)]
    spare = [from_wire(Device, device(2, None, None, 0, 0, 0))] if free_device else []
    return tuple(held + spare)


def test_rising_ttft_with_flat_throughput_and_memory_to_spare_says_upgrade() -> None:
    [advice] = advise(smol(), Series(FLAT, RISING), devices())
    assert advice.startswith("smol: TTFT p95 rose 1.9x in 2 min while tokens/s stayed at ~111")
    assert advice.endswith("add a replica: mgpud scale smol --dp 3")
    [crowded] = advise(smol(), Series(FLAT, RISING), devices(free_device=False))
    assert "compute-bound" in crowded and "more or faster devices" in crowded and "mgpud scale" not in crowded


def test_no_upgrade_advice_when_a_condition_fails() -> None:
    growing = tuple(50.0 + i for i in range(WINDOW))  # throughput grows with the load: it keeps up
    assert advise(smol(), Series(growing, RISING), devices()) == []
    assert advise(smol(), Series(FLAT, (100.0,) * WINDOW), devices()) == []  # TTFT steady
    assert advise(smol(), Series(FLAT, RISING), devices(free_device=False, full=True)) == []  # memory is the limit
    assert advise(smol(), Series(FLAT[:WINDOW - 1], RISING[:WINDOW - 1]), devices()) == []  # too short to tell
    idle = (0.0,) * WINDOW
    assert advise(smol(), Series(idle, RISING), devices()) == []  # nothing served: not compute-bound


def test_kv_room_and_idle_replica_rules() -> None:
    short = advise(smol(waiting=3, kv_used=1900), Series((), ()), devices())
    assert short == ["smol: KV cache 95% full with 3 waiting: give it more KV room: mgpud scale smol --tp 2 "
                     "(or a shorter max_model_len)"]
    assert advise(smol(waiting=0, kv_used=1900), Series((), ()), devices()) == []  # full, nobody waits
    [idle] = advise(smol(waiting=2, idle_replica=True), Series((), ()), devices())
    assert idle.startswith("smol: replica 1 idle while replica 0 queues 2: check the routing")
    assert idle.endswith("mgpud scale smol --tp 2 --dp 1")


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
    """Telemetry of two minutes in which smol's TTFT p95 climbs while its tokens/s stays flat."""

    runtime_dir = Path("/run/mgpud")

    async def events(self, topics: tuple[str, ...] = ("",)) -> AsyncIterator[dict[str, Any]]:
        for i in range(WINDOW):
            data = telemetry(0)
            model = smol()
            model.stats = replace(model.stats, tokens_per_s_10s=FLAT[i], ttft_p95_ms=RISING[i])  # type: ignore[arg-type]
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
