"""Measuring a rank's memory: resident set on CPU devices, the allocator on CUDA."""

from __future__ import annotations

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


def kv_budget(device: torch.device, capacity: int | None, utilization: float,
              peak_activations: int, num_devices: int) -> int:
    """Bytes left for the KV cache on this rank after weights, runtime and activations."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(total * utilization) - (total - free) - peak_activations
    capacity = capacity or cpu_device_memory(num_devices)
    return int(capacity * utilization) - rss() - peak_activations
