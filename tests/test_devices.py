"""Device discovery and telemetry, through FakeNvml (no driver needed) and, where present, a real GPU."""

from __future__ import annotations

import os
import sys

import pynvml
import pytest

from mgpud.engine.hosts import inventory as devices, nvml
from mgpud.engine.hosts.inventory import DeviceSpecError, cuda_visible, discover, memory_breakdown, refresh
from mgpud.records import to_wire

from fake_nvml import FakeGpu, FakeNvml, MiB

GiB = 1 << 30


@pytest.fixture
def fake(monkeypatch):
    """Installs a FakeNvml with two GPUs; tests change it before discovering."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = [FakeGpu(uuid="GPU-aaaa1111", processes=[(os.getpid(), 3 * GiB)]),
            FakeGpu(uuid="GPU-bbbb2222", used=70 * GiB, utilization=97, temperature=71,
                    power_mw=612_500)]
    module = FakeNvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def test_discover_reads_every_gpu(fake):
    d0, d1 = discover()
    assert (d0.id, d0.index, d0.kind, d0.nvml_index, d0.uuid) == ("cuda:0", 0, "cuda", 0, "GPU-aaaa1111")
    assert d0.name == "NVIDIA H100 80GB HBM3" and d0.available and d0.unavailable == {}
    assert d0.memory_total == 81559 * MiB and d0.memory_free == d0.memory_total - d0.memory_used
    [proc] = d0.processes
    assert (proc.pid, proc.memory) == (os.getpid(), 3 * GiB) and proc.name  # our own process's name
    assert (d1.utilization, d1.temperature, d1.power) == (97.0, 71.0, 612.5)


def test_no_driver_falls_back_to_cpu_and_says_why(fake):
    fake.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    assert [d.kind for d in discover()] == ["cpu"] * devices.AUTO_CPU_DEVICES
    assert "no NVIDIA driver" in nvml.module()[1]


def test_asked_for_gpus_without_driver_gets_unavailable_devices(fake):
    fake.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    found = discover("0,1")
    assert [d.id for d in found] == ["cuda:0", "cuda:1"]
    assert all(not d.available and "Driver Not Loaded" in d.error for d in found)
    assert found[0].memory_total is None


def test_failing_reading_is_a_sentinel_with_a_reason(fake):
    fake.gpus[1].fail = {"nvmlDeviceGetTemperature": pynvml.NVML_ERROR_NOT_SUPPORTED,
                         "nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NO_PERMISSION,
                         "nvmlDeviceGetComputeRunningProcesses": pynvml.NVML_ERROR_UNKNOWN}
    d1 = discover()[1]
    assert d1.available and d1.memory_total == 81559 * MiB  # the other readings still arrive
    assert d1.temperature is None and d1.power is None and d1.processes == []
    assert set(d1.unavailable) == {"temperature", "power", "processes"}
    assert "Not Supported" in d1.unavailable["temperature"]
    assert "permission denied" in d1.unavailable["power"]


def test_lost_gpu_is_listed_unavailable(fake):
    fake.gpus[0].fail = {"nvmlDeviceGetHandleByIndex": pynvml.NVML_ERROR_GPU_IS_LOST}
    d0, d1 = discover()
    assert not d0.available and "fell off the bus" in d0.error and d0.memory_total is None
    assert d1.available


def test_missing_ordinal_and_malformed_spec(fake):
    assert "does not exist: 2 GPU(s)" in discover("cuda:0,cuda:5")[1].error
    for bad in ("cpu:0", "cpu:x", "0,0", "gpu0", "1,,2"):
        with pytest.raises(DeviceSpecError):
            discover(bad)


def test_cuda_visible_devices_renumbers(fake, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    [only] = discover()
    assert (only.id, only.nvml_index, only.uuid) == ("cuda:0", 1, "GPU-bbbb2222")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,0")
    assert [d.nvml_index for d in discover()] == [1, 0]


@pytest.mark.parametrize("env, expected", [
    ("", []), ("-1", []), ("0,1", [0, 1]), ("1,7,0", [1]), ("0,0", [0]),
    ("GPU-b", [1]), ("GPU-", []),  # an ambiguous UUID prefix names no GPU
    ("MIG-1234,0", []), (" 1 , 0 ", [1, 0]),
])
def test_cuda_visible_parsing(env, expected):
    assert cuda_visible(env, ["GPU-a1", "GPU-b2", None]) == expected


def test_refresh_reads_again_and_drops_stale_readings(fake):
    found = discover()
    fake.gpus[0].used = 40 * GiB
    fake.gpus[1].fail = {"nvmlDeviceGetHandleByIndex": pynvml.NVML_ERROR_GPU_IS_LOST}
    d0, d1 = refresh(found)
    assert d0.memory_used == 40 * GiB
    assert not d1.available and d1.memory_used is None and d1.uuid == "GPU-bbbb2222"


def test_refresh_after_nvml_breaks_keeps_identity(fake, monkeypatch):
    found = discover()
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], init_error=pynvml.NVML_ERROR_UNKNOWN))
    d0, _ = refresh(found)
    assert (d0.id, d0.name) == ("cuda:0", "NVIDIA H100 80GB HBM3")
    assert "NVML init unavailable" in d0.error and d0.temperature is None


def test_cpu_devices_share_cores_and_memory():
    found = discover("cpu:4", device_memory=3 * GiB)
    assert [d.id for d in found] == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    assert all(d.threads == max(1, devices.host_cores() // 4) for d in found)
    assert all(d.memory_total == d.memory_free == 3 * GiB for d in found)
    [one] = discover("cpu")
    assert one.threads == devices.host_cores()
    assert one.memory_total == devices.cpu_device_memory(1)


def test_cpu_devices_name_the_cores_they_are_pinned_to():
    cores = sorted(os.sched_getaffinity(0))
    found = discover(f"cpu:{len(cores) + 1}")
    for device, core in zip(found, cores):
        assert devices.cpu_cores(device.index, 1) == [core] and f"core {core}" in device.name
    # More devices than cores: the last has none of its own, and says so.
    assert devices.cpu_cores(found[-1].index, 1) is None and "unpinned" in found[-1].name
    [whole] = discover("cpu")
    assert devices.cpu_cores(0, whole.threads) == cores


def test_cpu_refresh_counts_worker_rss():
    found = discover("cpu:2", device_memory=64 * GiB)
    d0, d1 = refresh(found, {"cpu:0": [os.getpid(), 2 ** 22 + 7]})  # the second pid does not exist
    [proc] = d0.processes
    assert proc.pid == os.getpid() and d0.memory_used == proc.memory > 10 * MiB
    assert d0.memory_free == 64 * GiB - d0.memory_used
    assert d1.memory_used == 0 and d1.processes == []


def test_memory_breakdown():
    split = memory_breakdown(capacity=80 * GiB, used=60 * GiB, weights=16 * GiB,
                             kv_allocated=40 * GiB, kv_used=10 * GiB, activations=2 * GiB)
    assert (split.other, split.free, split.kv_used) == (2 * GiB, 20 * GiB, 10 * GiB)
    # A CPU worker's RSS lags behind KV it has not touched yet: the accounting counts as used.
    lazy = memory_breakdown(capacity=8 * GiB, used=1 * GiB, weights=GiB // 2,
                            kv_allocated=4 * GiB, kv_used=0, activations=0)
    assert (lazy.other, lazy.free) == (0, 8 * GiB - 4 * GiB - GiB // 2)


def test_device_goes_on_the_wire_as_plain_data(fake):
    data = to_wire(discover()[0])
    assert data["processes"][0]["pid"] == os.getpid() and data["unavailable"] == {}


@pytest.mark.gpu
def test_real_nvml():
    if nvml.module()[0] is None:
        pytest.skip(f"no GPU: {nvml.module()[1]}")
    found = discover("auto")
    assert found and all(d.kind == "cuda" for d in found)
    assert all(d.available and d.memory_total > 0 and d.uuid.startswith("GPU-") for d in found)
    assert refresh(found)[0].memory_used is not None
