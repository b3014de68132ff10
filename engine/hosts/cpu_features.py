"""What this host's CPU can do natively, read once from /proc/cpuinfo (no torch import).

bf16 matmul speed is a property of the CPU, not of torch: with AVX512-BF16 or AMX a bf16
GEMM runs about 2x fp32; without them torch emulates it and it runs 3x to 100x slower
(both measured on machines of this project). The default dtype follows this answer.
"""

from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor listed in a /proc/cpuinfo text (x86 `flags`,
    Arm `Features`); empty when there is no such line."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        return parse_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()  # not Linux: callers fall back to torch's own probe


@functools.cache
def cpu_model() -> str:
    """The first processor's model name ("" where /proc/cpuinfo has none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.partition(":")[2].strip() for line in lines if line.startswith("model name")), "")


@functools.cache
def native_bf16() -> bool:
    """Whether bf16 matrix instructions exist here (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags()
    if flags:
        return bool(flags & BF16_FLAGS)
    import torch  # no /proc/cpuinfo: ask torch's cpuinfo probe instead

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_dtype(on_cuda: bool) -> str:
    """What dtype `auto` means: bfloat16 on CUDA and on CPUs with bf16 matrix instructions,
    float32 on other CPUs. The engine and the planner both ask here."""
    return "bfloat16" if on_cuda or native_bf16() else "float32"
