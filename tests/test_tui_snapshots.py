"""SVG snapshots of the dashboard and each dialog, fed fixed telemetry by a fake client.

A snapshot that differs fails the test and leaves the new picture beside the old one
(`*.new.svg`); to accept it, run with MGPUD_UPDATE_SNAPSHOTS=1 and look at the result.
Textual upgrades change the SVG markup: regenerate them then.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from mgpud.tui.app import MgpudTop

SNAPSHOTS = Path(__file__).parent / "snapshots"
GiB = 1 << 30
MiB = 1 << 20
T0 = 1_800_000_000.0  # the daemon's clock at the first event
RESTARTED = "worker pid 4101 exited with code -9"  # replica 1's last failure


def device(index: int, model: str | None, replica: int | None, weights: int, kv: int, kv_used: int
           ) -> dict[str, Any]:
    used = weights + kv + 120 * MiB + 300 * MiB
    return {
        "id": f"cpu:{index}", "index": index, "kind": "cpu", "name": f"CPU virtual device {index}",
        "memory_total": 4 * GiB, "memory_used": used, "utilization": None, "temperature": None,
        "power": None, "error": None, "model": model, "rank": 0 if model else None, "replica": replica,
        "memory": {"weights": weights, "kv_allocated": kv, "kv_used": kv_used, "activations": 120 * MiB,
                   "other": 300 * MiB, "free": 4 * GiB - used},
    }


def replica(index: int, device_id: str, running: int, used: int, rate: float, ttft: float,
            error: str | None = None) -> dict[str, Any]:
    return {"index": index, "state": "ready", "devices": [device_id], "tp": 1, "pids": [4100 + index],
            "running": running, "waiting": 0, "kv_blocks_used": used, "kv_blocks_total": 1000,
            "tokens_per_s_10s": rate, "ttft_p50_ms": ttft / 2, "ttft_p95_ms": ttft, "error": error}


def telemetry(step: int) -> dict[str, Any]:
    """The daemon's telemetry `step` half-seconds after the first: smol serving on two
    replicas with a rising load, tiny still loading."""
    rate = 10.0 * step
    smol = {
        "name": "smol", "model": "demo", "state": "ready", "tp": 1, "dp": 2, "devices": ["cpu:0", "cpu:1"],
        "error": None, "progress": None, "pids": [4100, 4101],
        "info": {"max_model_len": 2048},
        "stats": {"running": 6, "waiting": 2, "kv_blocks_used": 700, "kv_blocks_total": 2000,
                  "replicas": [replica(0, "cpu:0", 4, 600, rate * 0.6, 80.0 + step),
                               replica(1, "cpu:1", 2, 100, rate * 0.4, 60.0 + step, RESTARTED)]},
        "figures": {"tokens_per_s": rate, "ttft_p50_ms": 35.0, "ttft_p95_ms": 80.0 + 4 * step, "running": 6},
    }
    tiny = {
        "name": "tiny", "model": "/models/tiny", "state": "loading", "tp": 1, "dp": 1, "devices": ["cpu:2"],
        "error": None, "progress": {"phase": "load", "bytes_done": 45, "bytes_total": 100,
                                    "tensors_done": 9, "tensors_total": 20, "message": "9/20 tensors"},
        "pids": [], "info": None, "stats": None, "figures": {"tokens_per_s": 0.0},
    }
    return {
        "daemon": {"version": "0.1.0", "protocol": 1, "pid": 4000, "state": "running",
                   "started_at": T0 - 3723, "uptime_s": 3723.0 + step / 2, "generations_running": 6},
        "devices": [device(0, "smol", 0, 538 * MiB, 2 * GiB, 1400 * MiB),
                    device(1, "smol", 1, 538 * MiB, 2 * GiB, 200 * MiB),
                    device(2, "tiny", 0, 0, 0, 0)],
        "models": [smol, tiny],
    }


LIFECYCLE = [
    {"kind": "daemon_ready"},
    {"kind": "model_loading", "model": "smol", "tp": 1, "dp": 2, "devices": ["cpu:0", "cpu:1"], "reasons": []},
    {"kind": "model_ready", "model": "smol"},
    {"kind": "replica_failed", "model": "smol", "replica": 1, "error": RESTARTED},
    {"kind": "replica_restarted", "model": "smol", "replica": 1},
    {"kind": "model_loading", "model": "tiny", "tp": 1, "dp": 1, "devices": ["cpu:2"], "reasons": []},
]

PLAN = {
    "model": "demo", "device_count": 3, "impossible": {"2": "9 attention heads cannot be split 2 ways"},
    "shapes": [
        {"tp": 1, "dp": d, "fits": True, "why": "holds 7 of the 16 sequences wanted at 2048 tokens",
         "weights_per_device": 538 * MiB, "kv_per_device": 2900 * MiB, "kv_tokens": 64912,
         "tokens_per_s": 18.3 * d, "bound": "memory"} for d in (1, 2, 3)],
    "chosen": [1, 3], "reasons": ["dp=3: 3 devices // tp=1"],
}


class FakeClient:
    """What the dashboard uses of AsyncClient, with fixed answers and no daemon."""

    runtime_dir = Path("/run/mgpud")

    def __init__(self) -> None:
        self.feed = [{"topic": "event", "time": T0 + i, "data": e} for i, e in enumerate(LIFECYCLE)]
        self.feed += [{"topic": "telemetry", "time": T0 + 10 + i / 2, "data": telemetry(i)} for i in range(12)]

    async def events(self, topics: tuple[str, ...] = ("",)) -> AsyncIterator[dict[str, Any]]:
        for event in self.feed:
            yield event
        await asyncio.Event().wait()  # a daemon with nothing more to say

    async def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        assert op == "plan", op
        return PLAN

    async def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Event times print in local time: pin it."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


async def _until(pilot: Pilot[None], ready: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def _settled(pilot: Pilot[None]) -> None:
    """Every fake event shown, no cursor blinking."""
    app = pilot.app
    await _until(pilot, lambda: getattr(app.screen_stack[0], "snapshot", None) is not None and
                 app.screen_stack[0].snapshot.daemon.uptime_s == 3723.0 + 11 / 2, "the last telemetry")
    for field in app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


def _check(app: MgpudTop, name: str) -> None:
    svg = app.export_screenshot(title=name)
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("MGPUD_UPDATE_SNAPSHOTS"):
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(svg)
        return
    if not path.exists() or path.read_text() != svg:
        path.with_suffix(".new.svg").write_text(svg)
        raise AssertionError(f"{path.name} (missing?) differs from the screen: see {path.stem}.new.svg, "
                             "then rerun with MGPUD_UPDATE_SNAPSHOTS=1 to accept the new one")


def snapshot(name: str, size: tuple[int, int], keys: tuple[str, ...] = (), plan: bool = False) -> None:
    async def go() -> None:
        app = MgpudTop(FakeClient())  # type: ignore[arg-type]
        async with app.run_test(size=size) as pilot:
            await _settled(pilot)
            await pilot.press(*keys)
            if plan:
                await _until(pilot, lambda: str(app.screen.query_one("#verdict").render())[:1] in ("✓", "✗"),
                             "the verdict")
            await _settled(pilot)
            _check(app, name)

    asyncio.run(go())


def test_main_screen_80x24() -> None:
    snapshot("main-80x24", (80, 24))


def test_main_screen_120x40() -> None:
    snapshot("main-120x40", (120, 40))


def test_main_screen_200x50() -> None:
    snapshot("main-200x50", (200, 50))


def test_main_screen_without_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    snapshot("main-80x24-no-colour", (80, 24))


def test_load_modal() -> None:
    snapshot("load-modal", (100, 30), ("l",), plan=True)


def test_scale_modal() -> None:
    snapshot("scale-modal", (100, 30), ("s",), plan=True)


def test_unload_modal() -> None:
    snapshot("unload-modal", (100, 30), ("u",))


def test_prompt_screen() -> None:
    snapshot("prompt-screen", (100, 30), ("g",))


def test_help_screen() -> None:
    snapshot("help-screen", (100, 30), ("question_mark",))
