"""Measuring a rank's memory: resident set on CPU devices, the allocator on CUDA."""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..hosts.inventory import cpu_device_memory

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:  # bytes
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """Samples RSS while the block runs; yields [peak bytes above the starting RSS]."""
    start = rss()
    result = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.0005):
            result[0] = max(result[0], rss() - start)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result[0] = max(result[0], rss() - start)


def zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor. On a CPU device its memory is an anonymous mapping: the OS hands out
    zero pages on first touch, so a KV cache costs resident memory only as blocks fill, and
    allocating it costs nothing (an eager fill of gigabytes took seconds per worker). A GPU
    clears memory at hundreds of GB/s, so there a plain fill stays."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    count = 1
    for n in shape:
        count *= n
    # The tensor keeps the mapping alive: torch.frombuffer holds a reference to it.
    pages = mmap.mmap(-1, max(1, count * dtype.itemsize))
    return torch.frombuffer(pages, dtype=dtype, count=count).view(shape)


def kv_budget(device: torch.device, capacity: int | None, utilization: float,
              peak_activations: int, num_devices: int, resident: int) -> int:
    """Bytes left for the KV cache on this rank after weights, runtime and activations.
    resident: a CPU rank's RSS before it profiled. Read after, it would count twice what the
    first forward leaves behind (thread pools, kernel scratch, freed blocks the allocator
    keeps), since the profile's peak holds it already; how much that is differs by CPU."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(total * utilization) - (total - free) - peak_activations
    capacity = capacity or cpu_device_memory(num_devices)
    return int(capacity * utilization) - resident - peak_activations
