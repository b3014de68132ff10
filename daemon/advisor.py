"""The planner's verdict as the daemon's loads and reshapes would meet it: on the devices
they may use, read at the last telemetry, with the engine limits they would apply."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgpud.ipc import errors as codes
from mgpud.ipc.errors import MgpudError

if TYPE_CHECKING:
    from collections.abc import Collection

    from mgpud.engine.planning.planner import Plan

    from mgpud.records import Device


def usable_devices(readings: list[Device], free: Collection[str], own: dict[str, set[int]]) -> list[Device]:
    """The devices free now, and those of the model being reshaped (`own`: device id -> that
    model's worker pids): its workers' memory counts as free, since the reshape stops them."""
    usable = [_without(d, own.get(d.id, set())) for d in readings if d.id in free or d.id in own]
    if not usable:
        raise MgpudError(codes.BUSY, "every device is in use; unload a model first")
    return usable


def _without(device: Device, pids: set[int]) -> Device:
    if device.memory_used is None or not pids:
        return device
    theirs = sum(p.memory or 0 for p in device.processes if p.pid in pids)
    used = max(0, device.memory_used - theirs)
    free = None if device.memory_total is None else device.memory_total - used
    return replace(device, memory_used=used, memory_free=free)


def check_model(model: str, tp: int) -> None:
    """Refuse what the model alone rules out, before any device is counted: a directory
    missing or damaged, an architecture not supported, a tp its heads cannot be split by
    (that is the true reason, whatever the devices). Blocking (it reads the config and the
    weights' headers): run it in a thread. Raises EngineError."""
    from mgpud.engine.core.prepared import check_model_dir
    from mgpud.engine.exceptions import ModelLoadError
    from mgpud.engine.planning.planner import load_model
    from mgpud.engine.store.demo import DEMO_NAME

    config = load_model(model)[0] if model == DEMO_NAME else check_model_dir(Path(model).expanduser())
    if tp and (problem := config.tp_problem(tp)):
        possible = ", ".join(map(str, config.valid_tp_degrees()))
        raise ModelLoadError(f"{problem}, so each rank cannot hold whole heads; tp may be {possible}")


def run_planner(model: str, devices: list[Device], tp: int, dp: int, limits: dict[str, Any],
                concurrency: int | None = None) -> Plan:
    """The planner's Plan for `model` ("demo" is one of its presets) on `devices` with the
    engine `limits` a load would use; tp or dp 0: the planner chooses. Blocking (it may read
    a config.json and measure the CPU): run it in a thread. Raises EngineError."""
    from mgpud.engine.planning.planner import plan
    from mgpud.engine.planning.targets import device_set_of

    asked = {} if concurrency is None else {"concurrency": concurrency}
    return plan(model, device_set_of(devices), tp=tp, dp=dp, **limits, **asked)


def warm_planner() -> None:
    """Measure this host's CPU now (in a child process: seconds), so that the next plan on CPU
    devices answers at once. Blocking: run it in a thread."""
    from mgpud.engine.hosts.hardware import measure_aside

    measure_aside()
