"""Time from load to ready against the time to read the same checkpoint files raw, in
one run: the demo model (SmolLM2-135M, bf16 on disk, served in fp32) at tp 1 and 3 (its
heads admit no 2), and a synthetic Llama checkpoint of about 2 GB (fp32, 16 heads, 4 KV
heads) at tp 1 and 2. Target: ratio (load_s / raw_read_s) at most 1.5.

    python benchmarks/load_time.py [--json] [--quick]

Each configuration is measured with a warm page cache (the files were just read) and a
cold one, where posix_fadvise(DONTNEED) drops the files from the cache; mincore(2) checks
that it did, and `cold` says why it was skipped when it did not. The engine starts its
ranks on warm workers (processes that have imported torch, as the daemon keeps them), so
`load_s`, from the engine's construction to ready, is the load a daemon pays; it splits
into `startup_s` (handing the ranks their work, model construction), `weights_s`
(reading and sharding the weights) and `profile_s` (activation profile, KV allocation),
as the engine's progress reports time its phases. The synthetic
checkpoint is written once, in shards, into the mgpud cache directory and reused.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import time
from pathlib import Path
from typing import Any

from common import benchmark, synthetic_checkpoint
from mgpud.engine import EngineConfig, ModelGroup
from mgpud.engine.core.loader import checkpoint_files
from mgpud.engine.core.warm import WarmPool
from mgpud.engine.serving.pool import DevicePool
from mgpud.engine.store.demo import demo_model_dir

from mgpud.records import LoadProgress

TARGET_RATIO = 1.5
_READ_CHUNK = 64 << 20


# -- the page cache -------------------------------------------------------------------------

def raw_read(files: list[Path]) -> float:
    """Seconds to read every byte of `files` into one reused buffer."""
    buf = bytearray(_READ_CHUNK)
    start = time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def drop_from_cache(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(files: list[Path]) -> float:
    """Share of the files' pages in the page cache, by mincore(2) on a mapping of each."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    resident = total = 0
    for file in files:
        size = file.stat().st_size
        pages = -(-size // mmap.PAGESIZE)
        with open(file, "rb") as f:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {file} failed")
        vec = (ctypes.c_ubyte * pages)()
        try:
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore on {file} failed")
        finally:
            libc.munmap(addr, size)
        resident += sum(b & 1 for b in vec)
        total += pages
    return resident / total if total else 0.0


# -- loading ----------------------------------------------------------------------------------

class OneLoadPool(WarmPool):
    """Warm workers for one timed load: no replacements once it is done (a daemon's pool
    starts them; here their imports would only hold up closing the pool, seconds each)."""

    def refill(self) -> None:
        pass


def timed_load(model: Path, tp: int) -> dict[str, float]:
    """Construct an engine on warm workers and time it, and its phases from its progress."""
    phases: dict[str, float] = {}

    def progress(p: LoadProgress) -> None:
        phases.update(p.seconds)

    cfg = EngineConfig(model=str(model), tp=tp, max_model_len=256, kv_cache_memory=32 << 20,
                       max_num_batched_tokens=64, max_num_seqs=4,
                       threads_per_device=max(1, (os.cpu_count() or 1) // tp))
    workers = OneLoadPool(tp)
    try:
        while workers.counts()[0] < tp:
            time.sleep(0.05)
        start = time.perf_counter()
        engine = ModelGroup(cfg, pool=DevicePool([f"cpu:{i}" for i in range(tp)], workers), progress=progress)
        ready = time.perf_counter()
        engine.shutdown()
    finally:
        workers.close()
    # With an explicit KV budget the engine skips profiling.
    return {"load_s": ready - start, "startup_s": phases["start"], "weights_s": phases["load"],
            "profile_s": phases.get("profile", 0.0) + phases["kv"]}


def measure(model: Path, tp: int, cold: bool) -> dict[str, Any]:
    files = checkpoint_files(model)
    if cold:
        drop_from_cache(files)
        left = resident_fraction(files)
        if left > 0.05:
            return {"skipped": f"posix_fadvise(DONTNEED) left {left:.0%} of the files cached"}
    else:
        raw_read(files)  # warm the cache
    read_s = raw_read(files)
    if cold:
        drop_from_cache(files)
    result = timed_load(model, tp)
    return {**result, "raw_read_s": read_s, "ratio": result["load_s"] / read_s,
            "weights_ratio": result["weights_s"] / read_s,
            "checkpoint_bytes": sum(f.stat().st_size for f in files)}


@benchmark("load_time", __doc__, quick_help="a small smoke run (a ~170 MB synthetic checkpoint)")
def main(args: argparse.Namespace) -> dict[str, Any]:
    synthetic = synthetic_checkpoint("small" if args.quick else "full")
    configs = [("synthetic", synthetic, 1), ("synthetic", synthetic, 2)]
    if not args.quick:
        configs = [("smollm2", demo_model_dir(), 1), ("smollm2", demo_model_dir(), 3), *configs]
    result: dict[str, Any] = {f"{name}_tp{tp}": {"warm": measure(path, tp, cold=False),
                                                 "cold": measure(path, tp, cold=True)}
                              for name, path, tp in configs}
    headline = result["synthetic_tp1"]["warm"]
    result.update(load_s=headline["load_s"], raw_read_s=headline["raw_read_s"], ratio=headline["ratio"],
                  target_ratio=TARGET_RATIO)
    return result


if __name__ == "__main__":
    main()
