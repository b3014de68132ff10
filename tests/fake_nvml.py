"""FakeNvml: a test stand-in for the `pynvml` module, for hosts without an NVIDIA driver.

Install it with `monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([...]))`. Failures are
raised as the real pynvml exception classes (built from NVML error codes), so the code
under test sees exactly what it would see on a host with a driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml as real

MiB = 1 << 20


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total: int = 81559 * MiB  # bytes
    used: int = 512 * MiB  # bytes
    utilization: int = 0  # percent
    temperature: int = 35  # Celsius
    power_mw: int = 70_000  # milliwatts
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)
    fail: dict[str, int] = field(default_factory=dict)  # pynvml function -> NVML error code


class FakeNvml:
    NVMLError = real.NVMLError
    NVML_TEMPERATURE_GPU = real.NVML_TEMPERATURE_GPU

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None,
                 count_error: int | None = None):
        self.gpus = gpus
        self.init_error = init_error
        self.count_error = count_error
        self.init_calls = 0

    @staticmethod
    def _raise_if(code: int | None) -> None:
        if code is not None:
            raise real.NVMLError(code)

    def _gpu(self, handle: FakeGpu, fn: str) -> FakeGpu:
        self._raise_if(handle.fail.get(fn))
        return handle

    def nvmlInit(self) -> None:
        self.init_calls += 1
        self._raise_if(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        self._raise_if(self.count_error)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not 0 <= index < len(self.gpus):
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(self.gpus[index], "nvmlDeviceGetHandleByIndex")

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=gpu.total, used=gpu.used, free=gpu.total - gpu.used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._gpu(handle, "nvmlDeviceGetUtilizationRates").utilization,
                               memory=0)

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        assert sensor == real.NVML_TEMPERATURE_GPU
        return self._gpu(handle, "nvmlDeviceGetTemperature").temperature

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[SimpleNamespace]:
        gpu = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]
