"""The scaling advisor (mgpud/advice.py): its rules on synthetic figure series, the
history the daemon keeps for it, the daemon's telemetry advising on what it reads, and
`status` and `ps` printing the advice with its command."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import click
import pytest

from mgpud.advice import WINDOW_S, History, Series, advise
from mgpud.cli.ps import format_models
from mgpud.cli.status import format_status
from mgpud.daemon.telemetry import Telemetry
from mgpud.records import Device, ModelFigures, ModelRecord, from_wire, to_wire
from test_tui_snapshots import GiB, device, replica

STEP = 0.5  # seconds between samples, as the daemon's telemetry takes them
N = int(WINDOW_S / STEP) + 1  # samples that span the window
TIMES = tuple(STEP * i for i in range(N))
RISING = tuple(100.0 + 300.0 * i / N for i in range(N))  # TTFT p95 from 100 to 400 ms
FLAT = tuple(110.0 + (i % 3) for i in range(N))  # tokens/s steady around 110


def smol(waiting: int = 0, kv_used: int = 700, idle_replica: bool = False, tp_degrees: tuple[int, ...] = (1, 2, 4)
         ) -> ModelRecord:
    replicas = [replica(0, "cpu:0", 4, 600, 66.0, 90.0), replica(1, "cpu:1", 0 if idle_replica else 2, 100, 44, 70.0)]
    replicas[0] = replace(replicas[0], waiting=waiting)
    stats = ModelFigures(name="smol", tp=1, dp=2, max_model_len=2048, running=6, waiting=waiting,
                         kv_blocks_used=kv_used, kv_blocks_total=2000, tokens_per_s_10s=110.0, ttft_p95_ms=400.0,
                         replicas=replicas)
    return ModelRecord(name="smol", model="demo", state="ready", tp=1, dp=2, devices=["cpu:0", "cpu:1"], stats=stats,
                       tp_degrees=list(tp_degrees))


def devices(free: int = 1, full: bool = False) -> tuple[Device, ...]:
    """smol's two devices (`full`: KV takes most of their memory) and `free` more."""
    held = [from_wire(Device, device(i, "smol", i, 538 << 20, (3 * GiB if full else GiB), 0)) for i in (0, 1)]
    return tuple(held + [from_wire(Device, device(2 + i, None, None, 0, 0, 0)) for i in range(free)])


def series(tokens: tuple[float, ...], ttft: tuple[float, ...]) -> Series:
    return Series(TIMES[:len(tokens)], tokens, ttft)


def test_rising_ttft_with_flat_throughput_and_memory_to_spare_says_upgrade() -> None:
    [advice] = advise(smol(), series(FLAT, RISING), devices())
    assert advice.startswith("smol: TTFT p95 rose 1.9x in 2 min while tokens/s stayed at ~111")
    assert advice.endswith("add a replica: mgpud scale smol --dp 3")
    [crowded] = advise(smol(), series(FLAT, RISING), devices(free=0))
    assert "compute-bound" in crowded and "more or faster devices" in crowded and "mgpud scale" not in crowded


def test_no_upgrade_advice_when_a_condition_fails() -> None:
    growing = tuple(50.0 + i for i in range(N))  # throughput grows with the load: it keeps up
    assert advise(smol(), series(growing, RISING), devices()) == []
    assert advise(smol(), series(FLAT, (100.0,) * N), devices()) == []  # TTFT steady
    assert advise(smol(), series(FLAT, RISING), devices(free=0, full=True)) == []  # memory is the limit
    assert advise(smol(), series(FLAT[:N - 1], RISING[:N - 1]), devices()) == []  # too short to tell
    assert advise(smol(), series((0.0,) * N, RISING), devices()) == []  # nothing served: not compute-bound
    assert advise(replace(smol(), state="degraded"), series(FLAT, RISING), devices()) == []


def test_kv_room_and_idle_replica_rules() -> None:
    short = advise(smol(waiting=3, kv_used=1900), Series(), devices(free=2))
    assert short == [("smol: KV cache 95% full with 3 waiting: give it more KV room: mgpud scale smol --tp 2 "
                      "(or a shorter max_model_len)")]
    # tp=2 x dp=2 needs four devices, and a model whose heads split 1 or 3 ways has no tp=2.
    reload = ("smol: KV cache 95% full with 3 waiting: give it more KV room: load it again with a larger "
              "--kv-cache-memory or a shorter --max-model-len")
    assert advise(smol(waiting=3, kv_used=1900), Series(), devices(free=1)) == [reload]
    assert advise(smol(waiting=3, kv_used=1900, tp_degrees=(1, 3)), Series(), devices(free=2)) == [reload]
    assert advise(smol(waiting=0, kv_used=1900), Series(), devices()) == []  # full, nobody waits
    [idle] = advise(smol(waiting=2, idle_replica=True), Series(), devices())
    assert idle.startswith("smol: replica 1 idle while replica 0 queues 2: check the routing")
    assert idle.endswith("mgpud scale smol --tp 2 --dp 1")
    [narrow] = advise(smol(waiting=2, idle_replica=True, tp_degrees=(1, 3)), Series(), devices(free=0))
    assert narrow.endswith("check the routing")


def test_the_history_spans_the_window_at_the_daemons_interval_and_forgets_unloaded_models() -> None:
    history = History.for_advice(0.25)
    assert history.samples * 0.25 > WINDOW_S  # enough samples at that interval to cover two minutes
    history = History(3)
    for step in range(5):
        got = history.record([replace(smol(), stats=replace(smol().stats, tokens_per_s_10s=float(step)))])
    assert got["smol"].tokens_per_s == (2.0, 3.0, 4.0) and got["smol"].ttft_p95_ms == (400.0,) * 3
    assert list(got["smol"].times) == sorted(got["smol"].times)
    assert set(history.record([replace(smol(), name="tiny")])) == {"tiny"}


def test_the_daemons_telemetry_advises_on_what_it_reads() -> None:
    """What `status`, `models` and the telemetry messages carry (daemon/telemetry.py)."""
    telemetry = Telemetry(list(devices()), 0.5)
    crowded = smol(waiting=3, kv_used=1900)
    asyncio.run(telemetry.refresh([crowded, replace(smol(), name="calm")]))
    [advised, calm] = telemetry.advised([crowded, replace(smol(), name="calm")])
    assert advised.advice == advise(crowded, Series(), devices()) and len(advised.advice) == 1
    assert calm.advice == []
    assert telemetry.advised([replace(smol(), name="new")])[0].advice == []  # loaded since the last refresh


@pytest.fixture
def advised() -> dict[str, object]:
    model = smol(waiting=3, kv_used=1900)
    return to_wire(replace(model, advice=advise(model, Series(), devices(free=2))))


def test_status_and_ps_print_the_advice_under_the_model(advised: dict[str, object]) -> None:
    reply = {"version": "0.1.0", "protocol": 1, "pid": 1, "state": "running", "started_at": 0.0, "uptime_s": 5.0,
             "control_socket": "c", "events_socket": "e", "state_file": "s", "config_file": None,
             "devices": {"total": 3, "free": 1, "kinds": ["cpu"]}, "models": [advised]}
    lines = click.unstyle(format_status(reply)).splitlines()
    model = next(i for i, line in enumerate(lines) if line.startswith("    smol  tp=1 dp=2"))
    assert lines[model + 1] == "      advice: smol: KV cache 95% full with 3 waiting: give it more KV room: " \
                               "mgpud scale smol --tp 2 (or a shorter max_model_len)"
    table = click.unstyle(format_models({"models": [advised]}))
    assert table.splitlines()[-1].startswith("advice: smol: KV cache 95% full")
    assert "advice" not in format_models({"models": [{**advised, "advice": []}]})
