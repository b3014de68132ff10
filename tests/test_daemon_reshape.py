"""Reshaping through a real daemon: reconfigure's progress frames and events, and the
planner's verdict on the devices a load or a reshape could use, with the daemon's limits.

The daemon's CPU devices are small (512 MiB, as on a laptop) so that memory held by a
loaded model would show in the budget if the planner counted it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import Client, MgpudError
from waiting import wait_for

from mgpud.records import LoadProgress

KV = 2 << 20  # bytes per rank
LIMITS = {"kv_cache_memory": KV, "max_model_len": 256}
CONFIG_MAX_MODEL_LEN = 128  # the daemon's [engine] default, below the tiny model's 512


@pytest.fixture(scope="module")
def daemon(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    config = tmp_path_factory.mktemp("reshape") / "mgpud.toml"
    config.write_text(f"[engine]\nmax_model_len = {CONFIG_MAX_MODEL_LEN}\n")
    with DaemonProcess("--config", str(config), "--device-memory", "512MiB") as d:
        with d.client(timeout=60) as c:
            c.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=1, **LIMITS)
        yield d


def shape(plan: dict[str, Any], tp: int, dp: int) -> dict[str, Any]:
    return next(s for s in plan["shapes"] if (s["tp"], s["dp"]) == (tp, dp))


def test_plan_counts_free_devices_and_the_daemons_limits(daemon: DaemonProcess, tiny_llama: Path) -> None:
    with daemon.client() as c:
        # The model's worker is read on cpu:0 (its RSS): the plans below must not count it.
        wait_for(lambda: c.call("devices")["devices"][0]["memory_used"], "a memory reading of cpu:0")
        load = c.call("plan", model=str(tiny_llama))
        assert (load["device_count"], load["chosen"], load["budget"] > 0) == (1, [1, 1], True)
        assert load["max_model_len"] == CONFIG_MAX_MODEL_LEN and shape(load, 1, 1)["fits"]
        assert shape(load, 1, 1)["kv_per_device"] > KV  # what the budget leaves
        fixed = c.call("plan", model=str(tiny_llama), kv_cache_memory=KV)
        assert shape(fixed, 1, 1)["kv_per_device"] == KV
        too_many = c.call("plan", model=str(tiny_llama), tp=2, dp=1)
        assert too_many["chosen"] is None and "needs 2 devices; 1 available" in too_many["reasons"][0]


def test_plan_of_a_reshape_counts_the_models_own_devices(daemon: DaemonProcess, tiny_llama: Path) -> None:
    with daemon.client() as c:
        wait_for(lambda: c.call("devices")["devices"][0]["memory_used"], "a memory reading of cpu:0")
        free_budget = c.call("plan", model=str(tiny_llama))["budget"]
        reshape = c.call("plan", name="tiny", tp=2, dp=1)
        assert (reshape["model"], reshape["device_count"], reshape["chosen"]) == ("llama", 2, [2, 1])
        assert reshape["budget"] == free_budget  # the model's own memory counts as free
        # Its own limits, not the config's: what a reconfigure would run with.
        assert reshape["max_model_len"] == 256 and shape(reshape, 2, 1)["kv_per_device"] == KV
        assert shape(reshape, 2, 1)["fits"]
        assert c.call("plan", name="tiny", dp=2)["chosen"] == [1, 2]  # tp stays the model's
        assert c.call("plan", name="tiny", tp=3)["chosen"] is None  # 4 heads do not split 3 ways
        for args, code in [({"name": "nope"}, "not_found"), ({"dtype": "fp32"}, "bad_request")]:
            with pytest.raises(MgpudError) as info:  # not_found: its handler's; bad_request: its door's check
                c.call("plan", **args)
            assert info.value.code == code


def reconfigure(c: Client, dp: int, on_start: Any = None) -> tuple[list[dict], dict]:
    """Frames and result of reconfiguring tiny to tp=1 x dp; `on_start()` runs at replica_starting."""
    stream = c.stream("reconfigure", name="tiny", dp=dp)
    frames = []
    for frame in stream:
        frames.append(frame)
        if frame.get("kind") == "replica_starting" and on_start:
            on_start()
    return frames, stream.result


def events_until(events: Iterator[dict], kind: str) -> list[dict]:
    """The lifecycle events up to and including the first of `kind`."""
    seen = []
    for event in events:
        if event["topic"] == "event":
            seen.append(event["data"])
            if event["data"]["kind"] == kind:
                return seen
    raise AssertionError("the events stopped")


def test_reconfigure_streams_progress_like_load(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=60) as c, daemon.client() as watcher:
        events = watcher.events(("telemetry", "event"))
        next(e for e in events if e["topic"] == "telemetry")  # subscribed: no event is missed now
        seen: list[dict] = []
        frames, result = reconfigure(c, 2, lambda: seen.append(watcher.call("models")["models"][0]))
        published = events_until(events, "reconfigure_finished")
        events.close()
    # The replica's worker takes seconds to start: the model was still reshaping when asked.
    assert seen[0]["state"] == "reconfiguring"
    kinds = [f["kind"] for f in frames if "kind" in f]
    assert kinds == ["reconfigure_started", "replica_starting", "replica_ready", "reconfigure_finished"]
    phases = [f["phase"] for f in frames if "phase" in f]
    assert "load" in phases and phases[-1] == "ready"
    assert all(set(f) == {field.name for field in dataclasses.fields(LoadProgress)} for f in frames if "phase" in f)
    starting = next(f for f in frames if f.get("kind") == "replica_starting")
    assert (starting["model"], starting["replica"], starting["devices"], starting["tp"]) == ("tiny", 1, ["cpu:1"], 1)
    finished = frames[-1]
    assert (finished["from"], finished["to"]) == ({"tp": 1, "dp": 1}, {"tp": 1, "dp": 2})
    assert finished["duration_s"] >= finished["held_s"] >= 0
    assert result["to"] == {"tp": 1, "dp": 2} and result["model"]["progress"] is None
    assert any(e["kind"] == "model_progress" and e["model"] == "tiny" for e in published)

    with daemon.client(timeout=60) as c:
        with pytest.raises(MgpudError) as info:  # no device is free for a load
            c.call("plan", model="demo")
        assert info.value.code == "busy"
        assert shape(c.call("plan", name="tiny", tp=2, dp=1), 2, 1)["fits"]  # a reshape may use them
        frames, result = reconfigure(c, 1)
    assert [f.get("kind") for f in frames] == ["reconfigure_started", "replica_draining", "replica_stopped",
                                               "reconfigure_finished"]
    assert (result["model"]["dp"], result["model"]["devices"]) == (1, ["cpu:0"])
