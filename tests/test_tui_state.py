"""The dashboard's pure parts: reading telemetry, figures, bars, verdicts, event lines,
and the telemetry worker's reconnection (with a fake client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mgpud.advice import History, tokens_per_s
from mgpud.ipc import DaemonUnavailable
from mgpud.tui import render
from mgpud.tui.events import describe
from mgpud.tui.feed import follow
from mgpud.tui.messages import ConnectionChanged, DaemonEvent, SnapshotArrived
from mgpud.records import MemorySplit
from mgpud.tui.state import HISTORY_SAMPLES, load_fraction, parse_snapshot, pids
from mgpud.tui.verdict import judge
from test_tui_snapshots import PLAN, telemetry
from waiting import until

def test_reads_replicas_and_their_figures() -> None:
    snap = parse_snapshot(telemetry(3), History(HISTORY_SAMPLES))
    smol, tiny = snap.models
    assert smol.stats is not None and tiny.stats is None
    assert (smol.tp, smol.dp, smol.stats.running, smol.stats.waiting) == (1, 2, 6, 2)
    assert smol.stats.kv_headroom == pytest.approx(1 - 700 / 2000)
    assert [tokens_per_s(r) for r in smol.stats.replicas] == pytest.approx([18.0, 12.0])
    assert smol.stats.replicas[0].kv_headroom == pytest.approx(0.4)
    assert pids(smol) == (4100, 4101) and pids(tiny) == ()
    assert (tiny.state, load_fraction(tiny), load_fraction(smol)) == ("loading", 0.45, None)
    cpu0 = snap.devices[0]
    assert (cpu0.model, cpu0.replica, cpu0.rank) == ("smol", 0, 0)
    assert cpu0.memory is not None and render.kv_reserved(cpu0.memory) == (2048 - 1400) << 20


def test_tolerates_missing_and_unknown_fields() -> None:
    """An older or newer daemon: what is missing reads as unknown, what is new is left out."""
    bare = parse_snapshot({"daemon": {"pid": 7, "new": 1}, "devices": [{"id": "cuda:0", "memory": {"free": 1}}],
                           "models": [{"name": "x", "progress": {"bytes_done": 1}}]}, History(HISTORY_SAMPLES))
    assert (bare.daemon.state, bare.daemon.pid, bare.daemon.uptime_s) == ("?", 7, None)
    assert bare.devices[0].memory is None and bare.devices[0].name == "?"  # an incomplete split: unknown
    model = bare.models[0]
    assert (model.state, model.tp, model.progress, model.stats) == ("?", None, None, None)
    assert tokens_per_s(model.stats) is None and pids(model) == ()


def test_unreadable_telemetry_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unreadable telemetry"):
        parse_snapshot({"models": [{"no": "name"}]}, History(HISTORY_SAMPLES))
    with pytest.raises(ValueError):
        parse_snapshot({"devices": "not a list of maps"}, History(HISTORY_SAMPLES))
    with pytest.raises(ValueError):
        parse_snapshot(["not", "a", "snapshot"], History(HISTORY_SAMPLES))  # type: ignore[arg-type]


def test_history_keeps_a_window_per_model_and_forgets_unloaded_ones() -> None:
    history = History(HISTORY_SAMPLES)
    for step in range(HISTORY_SAMPLES + 5):
        series = parse_snapshot(telemetry(step), history).history
    assert len(series["smol"].tokens_per_s) == HISTORY_SAMPLES
    assert series["smol"].tokens_per_s[-1] == 10.0 * (HISTORY_SAMPLES + 4)
    assert set(parse_snapshot({"models": [{"name": "tiny"}]}, history).history) == {"tiny"}


def test_figures() -> None:
    sizes = [render.size(n) for n in (None, 512, 1536, 340 << 20, 2900 << 20)]
    assert sizes == [render.NONE, "512B", "1.5K", "340M", "2.8G"]
    assert [render.duration(s) for s in (42, 303, 3723, 273600)] == ["42s", "5m03s", "1h02m", "3d04h"]
    assert render.millis(12_345) == "12.3s" and render.millis(80.4) == "80"


@pytest.mark.parametrize("width", [6, 16, 40])
def test_memory_bar_fills_its_width_and_shows_small_parts(width: int) -> None:
    memory = MemorySplit(weights=1 << 20, kv_allocated=2 << 20, kv_used=0, activations=10,
                         other=300 << 20, free=4 << 30)
    bar = render.memory_bar(memory, width).plain
    assert len(bar) == width
    assert {"█", "▒", "░", "▚", "·"} <= set(bar) and "▓" not in bar  # KV in use: none


def test_gauge() -> None:
    assert render.gauge(0.5, 6).plain == "███░░░  50%"
    assert render.gauge(None, 6).plain == render.NONE


def test_verdicts() -> None:
    auto = judge(PLAN, 0, 0)
    assert auto.fits and auto.headline == "fits: tp 1 x dp 3 (the planner's choice)"
    assert "dp=3: 3 devices // tp=1" in auto.details
    assert judge(PLAN, 1, 0).headline.endswith("dp 3 (the planner's choice)")  # dp follows the planner
    assert judge(PLAN, 1, 2).headline == "fits: tp 1 x dp 2"
    impossible = judge(PLAN, 2, 1)
    assert impossible.fits is False and "cannot be split" in impossible.details[0]
    too_big = judge(PLAN, 4, 1)
    assert too_big.fits is False and "3 device" in too_big.headline


def test_event_lines() -> None:
    assert describe({"kind": "model_progress", "model": "x"}) is None
    failed = describe({"kind": "replica_failed", "model": "smol", "replica": 1, "error": "killed"})
    assert failed is not None and failed.plain == "smol replica 1: FAILED: killed" and failed.style == "bold red"
    done = describe({"kind": "reconfigure_finished", "model": "smol", "to": {"tp": 2, "dp": 1},
                     "duration_s": 3.2, "held_s": 0.4})
    assert done is not None and done.plain == "smol: now tp 2 x dp 1 after 3.2 s, requests held 0.4 s"
    odd = describe({"kind": "something_new", "a": 1, "time": 5})
    assert odd is not None and odd.plain == "something_new a=1"


class FlakyClient:
    """No daemon, then one that says two things and goes silent."""

    runtime_dir = Path("/nowhere")

    def __init__(self) -> None:
        self.attempts = 0

    async def events(self, topics: tuple[str, ...] = ("",)) -> AsyncIterator[dict[str, Any]]:
        self.attempts += 1
        if self.attempts == 1:
            raise DaemonUnavailable("/nowhere/events.sock", "the socket file does not exist")
        yield {"topic": "event", "time": 1.0, "data": {"kind": "daemon_ready"}}
        yield {"topic": "telemetry", "time": 2.0, "data": telemetry(0)}
        raise DaemonUnavailable("/nowhere/events.sock", "no event for 3 s")


def test_the_worker_reports_the_connection_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mgpud.tui.feed.RETRY_S", 0.0)
    posted: list[Any] = []

    async def run() -> None:
        client = FlakyClient()
        task = asyncio.create_task(follow(client, posted.append))  # type: ignore[arg-type]
        await until(None, lambda: client.attempts >= 3, "the third connection attempt", detail=lambda: posted)
        task.cancel()

    asyncio.run(run())
    kinds = [type(m).__name__ for m in posted[:5]]
    assert kinds == ["ConnectionChanged", "ConnectionChanged", "DaemonEvent", "SnapshotArrived", "ConnectionChanged"]
    down, up, event, snap, lost = posted[:5]
    assert isinstance(down, ConnectionChanged) and not down.connected and "does not exist" in down.reason
    assert isinstance(up, ConnectionChanged) and up.connected and up.at == 1.0
    assert isinstance(event, DaemonEvent) and event.data["kind"] == "daemon_ready"
    assert isinstance(snap, SnapshotArrived) and snap.snapshot.models[0].name == "smol"
    assert isinstance(lost, ConnectionChanged) and "no event" in lost.reason


def test_snapshots_coalesce_and_events_do_not() -> None:
    snap = parse_snapshot(telemetry(0), History(HISTORY_SAMPLES))
    newer = SnapshotArrived(snap)
    assert newer.can_replace(SnapshotArrived(snap))
    assert not newer.can_replace(DaemonEvent(0.0, {"kind": "daemon_ready"}))
    assert not DaemonEvent(0.0, {}).can_replace(DaemonEvent(0.0, {}))
