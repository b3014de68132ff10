"""Devices a model runs on: CUDA GPUs found through NVML, or CPU virtual devices.

A reading that fails is None, with the reason in `Device.unavailable` (or `Device.error`
when the device cannot be read at all); `discover` and `refresh` never raise for them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from types import ModuleType
from typing import Any, Iterable

import psutil

from mgpud.records import Device, DeviceProcess, MemorySplit

from ..exceptions import EngineError
from . import nvml
from .cpu_features import native_bf16

CPU_MEMORY_FRACTION = 0.8  # of host RAM shared by CPU devices; the rest is the OS's and the daemon's
AUTO_CPU_DEVICES = 1  # one device holding every core: no gloo hops unless the operator asks for cpu:N


class DeviceSpecError(EngineError, ValueError):
    """A --devices value that names no devices."""


def memory_breakdown(capacity: int, used: int, weights: int, kv_allocated: int, kv_used: int,
                     activations: int, kv_touched: int = 0, graphs: int = 0) -> MemorySplit:
    """Split one device's memory (all arguments in bytes) for display.

    `used` is what the device reports: NVML's used memory for a GPU, the workers' RSS for a
    CPU device. RSS can be below the engine's accounting (untouched KV pages are not
    resident yet), so the larger of the two counts as taken.
    """
    engine = weights + kv_allocated + activations + graphs
    return MemorySplit(weights=weights, kv_allocated=kv_allocated,
                       kv_used=min(kv_used, kv_allocated), activations=activations,
                       other=max(0, used - engine), free=max(0, capacity - max(used, engine)),
                       kv_touched=min(kv_touched, kv_allocated), graphs=graphs)


def discover(spec: str | None = None, device_memory: int | None = None) -> list[Device]:
    """The devices `spec` names.

    spec: None or "auto" (every visible GPU, else CPU devices), "cpu" / "cpu:N", or CUDA
    ordinals "0,1" / "cuda:0,cuda:1" (numbered after CUDA_VISIBLE_DEVICES, like torch).
    device_memory: bytes per CPU device; default an even share of CPU_MEMORY_FRACTION of RAM.
    Raises DeviceSpecError for a malformed spec only; GPU failures show in Device.error.
    """
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return gpu_devices(None) or cpu_devices(AUTO_CPU_DEVICES, device_memory)
    if text == "cpu" or text.startswith("cpu:"):
        return cpu_devices(_cpu_count(text), device_memory)
    return gpu_devices(_ordinals(text))


def _cpu_count(text: str) -> int:
    count = text.partition(":")[2] or "1"
    if not count.isdigit() or int(count) < 1:
        raise DeviceSpecError(f"--devices {text!r}: write cpu:N with N >= 1, e.g. cpu:2")
    return int(count)


def _ordinals(text: str) -> list[int]:
    entries = [e.strip().removeprefix("cuda:") for e in text.split(",")]
    if not all(e.isdigit() for e in entries) or len(set(entries)) != len(entries):
        raise DeviceSpecError(f"--devices {text!r}: write auto, cpu:N, or distinct GPU ordinals "
                              "such as 0,1 or cuda:0,cuda:1")
    return [int(e) for e in entries]


def _usable_cores() -> list[int]:
    """The cores this process may run on, where the OS says (Linux); else empty."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def host_cores() -> int:
    return len(_usable_cores()) or os.cpu_count() or 1


def cpu_device_memory(count: int) -> int:  # bytes per CPU device
    return int(psutil.virtual_memory().total * CPU_MEMORY_FRACTION) // count


def cpu_cores(index: int, threads: int) -> list[int] | None:
    """The cores CPU device `index` with `threads` threads is pinned to: its own run of the
    cores this process may use, or None where devices outnumber cores (the OS places it)."""
    allowed = _usable_cores()
    start = index * threads
    return allowed[start:start + threads] if start + threads <= len(allowed) else None


def pin_cpu_device(index: int, threads: int) -> None:
    """Keep this process, and the threads it starts from here on (torch's pool), on the
    device's own cores: a worker does not migrate, and devices do not share a core."""
    cores = cpu_cores(index, threads)
    if cores is not None:
        os.sched_setaffinity(0, cores)


def _cpu_name(index: int, threads: int, bf16: bool) -> str:
    # What `mgpud devices` shows: the cores, and when the default dtype will be bf16.
    cores = cpu_cores(index, threads)
    where = f", core{'s' if threads > 1 else ''} {_spans(cores)}" if cores else ", unpinned"
    return f"CPU virtual device ({threads} thread{'s' if threads > 1 else ''}{where}{', bf16' if bf16 else ''})"


def _spans(cores: list[int]) -> str:
    return f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) and len(cores) > 1 \
        else ",".join(map(str, cores))


def cpu_devices(count: int, device_memory: int | None = None) -> list[Device]:
    threads = max(1, host_cores() // count)
    capacity = device_memory or cpu_device_memory(count)
    bf16 = native_bf16()
    return [Device(id=f"cpu:{i}", index=i, kind="cpu", threads=threads, native_bf16=bf16,
                   name=_cpu_name(i, threads, bf16), memory_total=capacity, memory_used=0, memory_free=capacity)
            for i in range(count)]


def gpu_devices(ordinals: list[int] | None) -> list[Device]:
    """GPUs at these CUDA ordinals (None: all visible); [] for None when NVML is unusable."""
    mod, reason = nvml.module()
    indices: list[int] = []
    if mod is not None:
        indices, reason = visible_nvml_indices(mod)
    if reason:
        return [_unreadable(_gpu_identity(i, None), reason) for i in ordinals or []]
    wanted = range(len(indices)) if ordinals is None else ordinals
    return [_read_gpu(mod, _gpu_identity(i, indices[i])) if i < len(indices)
            else _unreadable(_gpu_identity(i, None), f"cuda:{i} does not exist: "
                             f"{len(indices)} GPU(s) visible to CUDA")
            for i in wanted]


def visible_nvml_indices(mod: ModuleType) -> tuple[list[int], str | None]:
    """NVML indices of the GPUs CUDA shows, in CUDA ordinal order."""
    count, reason = nvml.read(mod, "GPU count", "nvmlDeviceGetCount")
    if reason:
        return [], reason
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return list(range(count)), None
    return cuda_visible(env, [_uuid(mod, i) for i in range(count)]), None


def _uuid(mod: ModuleType, index: int) -> str | None:
    handle, reason = nvml.read(mod, "device handle", "nvmlDeviceGetHandleByIndex", index)
    return None if reason else nvml.read(mod, "UUID", "nvmlDeviceGetUUID", handle)[0]


def cuda_visible(env: str, uuids: list[str | None]) -> list[int]:
    """NVML indices CUDA_VISIBLE_DEVICES=`env` exposes, given each NVML index's UUID.

    Like CUDA, the list is read up to its first entry that names no GPU (or repeats one).
    Integer entries are taken as NVML indices: CUDA's default order agrees with NVML's
    PCI order on nodes of identical GPUs, the case this daemon serves.
    """
    chosen: list[int] = []
    for entry in (e.strip() for e in env.split(",")):
        index = _match(entry, uuids)
        if index is None or index in chosen:
            break
        chosen.append(index)
    return chosen


def _match(entry: str, uuids: list[str | None]) -> int | None:
    if entry.isdigit():
        return int(entry) if int(entry) < len(uuids) else None
    if not entry.startswith("GPU-"):
        return None  # MIG instances and typos: CUDA stops here too
    hits = [i for i, u in enumerate(uuids) if u and u.startswith(entry)]
    return hits[0] if len(hits) == 1 else None


def _gpu_identity(ordinal: int, nvml_index: int | None, name: str = "NVIDIA GPU",
                  uuid: str | None = None) -> Device:
    return Device(id=f"cuda:{ordinal}", index=ordinal, kind="cuda", name=name, uuid=uuid,
                  nvml_index=nvml_index)


def _unreadable(identity: Device, reason: str | None) -> Device:
    return replace(identity, error=reason)


def _read_gpu(mod: ModuleType, identity: Device) -> Device:
    handle, reason = nvml.read(mod, "device handle", "nvmlDeviceGetHandleByIndex", identity.nvml_index)
    if reason:
        return _unreadable(identity, reason)
    values: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for reading, fn, args, convert in _GPU_READINGS:
        value, reason = nvml.read(mod, reading, fn, handle, *args)
        if reason:
            missing[reading] = reason
        else:
            values.update(convert(value))
    return replace(identity, **values, unavailable=missing)


def _processes(raw: Iterable[Any]) -> dict[str, list[DeviceProcess]]:
    return {"processes": [DeviceProcess(p.pid, _process_name(p.pid), p.usedGpuMemory) for p in raw]}


def _process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"  # gone already, or in another container's pid namespace


# reading, pynvml function, extra arguments after the handle, value -> Device fields
_GPU_READINGS = (
    ("name", "nvmlDeviceGetName", (), lambda v: {"name": str(v)}),
    ("uuid", "nvmlDeviceGetUUID", (), lambda v: {"uuid": str(v)}),
    ("memory", "nvmlDeviceGetMemoryInfo", (),
     lambda m: {"memory_total": int(m.total), "memory_used": int(m.used), "memory_free": int(m.free)}),
    ("utilization", "nvmlDeviceGetUtilizationRates", (), lambda u: {"utilization": float(u.gpu)}),
    ("temperature", "nvmlDeviceGetTemperature", (0,),  # 0 = NVML_TEMPERATURE_GPU
     lambda t: {"temperature": float(t)}),
    ("power", "nvmlDeviceGetPowerUsage", (), lambda mw: {"power": mw / 1000.0}),
    ("processes", "nvmlDeviceGetComputeRunningProcesses", (), _processes),
)


def refresh(devices: list[Device], worker_pids: dict[str, list[int]] | None = None) -> list[Device]:
    """Fresh readings for `devices`.

    GPUs are read again through NVML. CPU devices report the RSS of the worker processes
    `worker_pids` lists for their id as used memory; the split into weights, KV and
    activations comes from the engine (see memory_breakdown).
    """
    pids = worker_pids or {}
    mod, reason = nvml.module() if any(d.kind == "cuda" for d in devices) else (None, None)
    return [_refresh_cpu(d, pids.get(d.id, [])) if d.kind == "cpu" else _refresh_gpu(mod, reason, d)
            for d in devices]


def _refresh_gpu(mod: ModuleType | None, reason: str | None, device: Device) -> Device:
    # Rebuilt from identity alone so that no stale reading survives a failed read.
    identity = _gpu_identity(device.index, device.nvml_index, device.name, device.uuid)
    if mod is None or device.nvml_index is None:
        return _unreadable(identity, reason or device.error)
    return _read_gpu(mod, identity)


def _refresh_cpu(device: Device, pids: list[int]) -> Device:
    procs = [p for p in (_cpu_process(pid) for pid in pids) if p is not None]
    used = sum(p.memory or 0 for p in procs)
    capacity = device.memory_total or 0
    return replace(device, memory_used=used, memory_free=max(0, capacity - used), processes=procs)


def _cpu_process(pid: int) -> DeviceProcess | None:
    try:
        proc = psutil.Process(pid)
        return DeviceProcess(pid, proc.name(), proc.memory_info().rss)
    except psutil.Error:
        return None  # a worker that exited between the daemon's bookkeeping and this read
