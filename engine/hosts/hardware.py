"""Hardware figures: vendors' dense (no sparsity) per-GPU numbers, and this host's CPU
measured once. Link bandwidth is per direction, the rate a ring all-reduce moves data at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cpu_features import cpu_flags, cpu_model
from .inventory import host_cores

MiB = 1 << 20
GiB = 1 << 30

@dataclass(frozen=True)
class Hardware:
    name: str
    memory: int  # bytes per device
    flops16: float  # FLOP/s, dense bf16/fp16 matmul
    flops32: float  # FLOP/s, dense fp32 matmul
    memory_bandwidth: float  # bytes/s
    link: str  # what connects the devices
    link_bandwidth: float  # bytes/s per direction, per device
    link_latency: float  # seconds one small all-reduce takes

    @property
    def interconnect(self) -> Link:
        return Link(self.link, self.link_bandwidth, self.link_latency)


@dataclass(frozen=True)
class Link:
    """What connects the devices, as the all-reduce cost needs it."""

    name: str
    bandwidth: float  # bytes/s per direction, per device
    latency: float  # seconds one small all-reduce takes


_NVLINK_LATENCY = 10e-6  # s: NCCL all-reduce of a decode-sized message inside an NVLink domain
_PCIE_LATENCY = 25e-6  # s: the same through the PCIe root complex

HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("H100-80GB", 81559 * MiB, 989e12, 67e12, 3.35e12, "NVLink 4 (SXM5)", 450e9, _NVLINK_LATENCY),
    Hardware("H100-PCIe", 81559 * MiB, 756e12, 51e12, 2.0e12, "PCIe Gen5 x16", 64e9, _PCIE_LATENCY),
    Hardware("A100-80GB", 81920 * MiB, 312e12, 19.5e12, 2.039e12, "NVLink 3 (SXM4)", 300e9, _NVLINK_LATENCY),
    Hardware("A100-40GB", 40960 * MiB, 312e12, 19.5e12, 1.555e12, "NVLink 3 (SXM4)", 300e9, _NVLINK_LATENCY),
    # Memory as the driver reports it (a little under the marketed size); bf16 without sparsity.
    Hardware("H200-141GB", 143771 * MiB, 989e12, 67e12, 4.8e12, "NVLink 4 (SXM5)", 450e9, _NVLINK_LATENCY),
    Hardware("B200-180GB", 183359 * MiB, 2.25e15, 75e12, 7.7e12, "NVLink 5 (HGX)", 900e9, _NVLINK_LATENCY),
    Hardware("L40S-48GB", 46068 * MiB, 362e12, 91.6e12, 864e9, "PCIe Gen4 x16", 32e9, _PCIE_LATENCY),
    Hardware("RTX-6000-Ada-48GB", 49140 * MiB, 364e12, 91.1e12, 960e9, "PCIe Gen4 x16", 32e9, _PCIE_LATENCY),
    # A10G (AWS): NVIDIA publishes no datasheet; memory and bandwidth as AWS gives them, tensor
    # throughput as the A10's, the same die.
    Hardware("A10G-24GB", 23028 * MiB, 125e12, 31.2e12, 600e9, "PCIe Gen4 x16", 32e9, _PCIE_LATENCY),
    Hardware("L4-24GB", 23034 * MiB, 121e12, 30.3e12, 300e9, "PCIe Gen4 x16", 32e9, _PCIE_LATENCY),
    # bf16 with fp32 accumulation (what torch uses), from the Ada architecture whitepaper.
    Hardware("RTX-4090-24GB", 24564 * MiB, 165.2e12, 82.6e12, 1.008e12, "PCIe Gen4 x16", 32e9, _PCIE_LATENCY),
    # AMD: planned only (the engine runs on CUDA or CPU); Infinity Fabric, 7 links of 64 GB/s each way.
    Hardware("MI300X-192GB", 192 * 1024 * MiB, 1307.4e12, 163.4e12, 5.3e12, "Infinity Fabric", 448e9,
             _NVLINK_LATENCY),
)}

# What `plan --devices NxSIZE --link KIND` lends a device known by its memory alone: the
# interconnect of a catalog card that has it (PCIe: the Gen4 x16 of the 24-48 GB cards;
# NVLink: an SXM5 H100's).
LINKS: dict[str, Link] = {"pcie": HARDWARE["L40S-48GB"].interconnect, "nvlink": HARDWARE["H100-80GB"].interconnect}

# Substrings of NVML device names -> preset; a GPU not listed gets no throughput estimate.
# "L40S" before "L4", which it contains.
_NVML_NAMES = (("H100 80GB HBM3", "H100-80GB"), ("H100 PCIe", "H100-PCIe"),
               ("A100-SXM4-80GB", "A100-80GB"), ("A100-SXM4-40GB", "A100-40GB"), ("H200", "H200-141GB"),
               ("B200", "B200-180GB"), ("L40S", "L40S-48GB"), ("RTX 6000 Ada", "RTX-6000-Ada-48GB"),
               ("A10G", "A10G-24GB"), ("NVIDIA L4", "L4-24GB"), ("RTX 4090", "RTX-4090-24GB"))


def hardware_for_gpu(nvml_name: str) -> Hardware | None:
    return next((HARDWARE[p] for part, p in _NVML_NAMES if part in nvml_name), None)


# Memory a worker holds before any weights; the planner leaves it out of the budget.
RUNTIME_MEMORY = {"cuda": 1 * GiB,  # CUDA context, cuBLAS workspace, NCCL buffers
                  "cpu": 272 * MiB}  # Python, torch, gloo, zmq: 256-268 MiB measured in loaded workers



CPU_ALLREDUCE_LATENCY = 0.5e-3  # s: gloo, 2 processes, decode-sized tensor (measured here: 0.3-0.7 ms)
CPU_LINK_BANDWIDTH = 2e9  # bytes/s: order of gloo over loopback; decode all-reduces are latency-bound


def cpu_hardware(count: int, memory: int) -> Hardware:
    """Figures for one of `count` CPU devices sharing this host's cores and memory bus."""
    figures = cpu_figures()
    cores = host_cores()
    share = min(max(1, cores // count), cores / count) / figures.threads
    return Hardware(f"CPU device ({figures.threads} threads measured)", memory,
                    figures.flops16 * share, figures.flops32 * share,
                    figures.copy_bandwidth * share, "gloo (loopback)",
                    CPU_LINK_BANDWIDTH, CPU_ALLREDUCE_LATENCY)


@dataclass(frozen=True)
class CpuFigures:
    threads: int  # torch threads used for the measurement
    flops32: float  # FLOP/s, fp32 matmul
    flops16: float  # FLOP/s, bf16 matmul
    copy_bandwidth: float  # bytes/s read plus written by a large tensor copy


_MEASURED: list[CpuFigures] = []  # this process's one measurement, once taken


def cpu_figures() -> CpuFigures:
    """This host measured once per process (~0.6 s here, importing torch, unless
    `measure_aside` or an earlier process took it already)."""
    if not _MEASURED:
        _MEASURED.append(_remembered() or _measure())
    return _MEASURED[0]


def measure_aside() -> None:
    """Take the measurement in a child process (blocking; seconds): the daemon neither
    imports torch for it nor holds its interpreter lock while torch imports and multiplies,
    which stalled its event loop for up to a second. A figure this machine measured before
    is read from the cache instead."""
    if _MEASURED:
        return
    figures = _remembered()
    if figures is None:
        child = subprocess.run([sys.executable, "-m", __name__], check=True, capture_output=True, text=True,
                               timeout=300)
        figures = CpuFigures(**json.loads(child.stdout))
    _MEASURED.append(figures)


def _cache_file() -> Path:
    """Where this machine's figures are kept, keyed by what changes them: the CPU (its model
    and flags), the cores this process may use, and torch's version."""
    from ..store.demo import cache_dir

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    key = f"{cpu_model()}|{sorted(cpu_flags())}|{host_cores()}|{torch_version}|{_MEASURE_VERSION}"
    return cache_dir() / "hardware" / f"cpu-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _remembered() -> CpuFigures | None:
    try:
        return CpuFigures(**json.loads(_cache_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None  # not measured on this machine yet, or an unreadable file: measure again


def _remember(figures: CpuFigures) -> None:
    file = _cache_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        temp = file.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(dataclasses.asdict(figures)))
        temp.rename(file)  # atomic: a concurrent reader sees all of it or nothing
    except OSError:
        pass  # a read-only cache: the next process measures again


_MEASURE_VERSION = 2  # bumped when _measure changes what it reports
_EMULATED = 5e9  # FLOP/s: a matmul this slow has no native instructions behind it


def _measure() -> CpuFigures:
    import torch  # only CPU planning pays for torch

    a32 = torch.randn(1024, 1024)
    src = torch.empty(16 * MiB)  # 64 MiB of fp32: far beyond the caches
    dst = torch.empty_like(src)
    figures = CpuFigures(threads=torch.get_num_threads(), flops32=_matmul_rate(a32, 0.3),
                         flops16=_matmul_rate(a32.bfloat16(), 0.15),
                         copy_bandwidth=_rate(lambda: dst.copy_(src), 2 * src.nbytes, 0.1))
    _remember(figures)
    return figures


def _matmul_rate(a: Any, seconds: float) -> float:
    """FLOP/s of square matmuls of a's dtype: first at 256; at a's full size only when that
    is fast. Emulated bf16 runs ~0.5 GFLOP/s, where one 1024 matmul would take seconds."""
    small = a[:256, :256].contiguous()
    rate = _rate(lambda: small @ small, 2 * 256 ** 3, seconds / 4)
    if rate < _EMULATED:
        return rate
    return _rate(lambda: a @ a, 2 * a.shape[0] ** 3, seconds)


def _rate(work: Callable[[], object], amount: float, seconds: float) -> float:
    """`amount` per call of `work`, per second, over about `seconds`."""
    work()  # warm-up: the first call allocates and picks kernels
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        work()
        calls += 1
    return calls * amount / elapsed


if __name__ == "__main__":  # measure_aside's child
    print(json.dumps(dataclasses.asdict(_measure())))
