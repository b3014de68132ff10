"""What the engine itself costs in memory: per rank, the resident set beyond the weights
and the KV cache after a run that keeps the engine busy at its batch limits, on the demo
model, in MiB.

    python benchmarks/memory_overhead.py [--json] [--quick]

`overhead_mib` is RSS - weights - KV. It splits into `anon_overhead_mib` (the rank's own
heap: activations, allocator caches, Python objects, the step plans) and `file_mib`
(shared libraries mapped from disk, libtorch above all, shared with every other process
that maps them). `bare_torch` is what a Python process holds after importing torch and
running one op: the floor any PyTorch engine starts from. The KV cache is allocated
zeroed, so all of it is resident from the start.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import psutil
from common import bench_model, bench_threads, benchmark, chat_workload
from mgpud.engine import EngineConfig, ModelGroup, SamplingParams

MIB = 1 << 20
_BARE_TORCH = "import torch; torch.ones(1).sum(); print(open('/proc/self/status').read())"


def parse_status(text: str) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and RssShmem from a /proc/PID/status text, in bytes."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def bare_torch() -> dict[str, float]:
    """What a Python process that imported torch and ran one op holds, in MiB."""
    out = subprocess.run([sys.executable, "-c", _BARE_TORCH], capture_output=True, text=True, check=True)
    mem = parse_status(out.stdout)
    return {"rss_mib": mem["VmRSS"] / MIB, "anon_mib": mem["RssAnon"] / MIB, "file_mib": mem["RssFile"] / MIB}


def rank_figures(pid: int, weights: int, kv: int, activations: int) -> dict[str, float]:
    with open(f"/proc/{pid}/status") as f:
        mem = parse_status(f.read())
    uss = psutil.Process(pid).memory_full_info().uss
    return {"rss_mib": mem["VmRSS"] / MIB, "uss_mib": uss / MIB, "weights_mib": weights / MIB,
            "kv_mib": kv / MIB, "profiled_activations_mib": activations / MIB,
            "overhead_mib": (mem["VmRSS"] - weights - kv) / MIB,
            "anon_overhead_mib": (mem["RssAnon"] - weights - kv) / MIB, "file_mib": mem["RssFile"] / MIB}


def full_load_run(tp: int, quick: bool) -> list[dict[str, float]]:
    threads = bench_threads(quick, tp)
    cfg = EngineConfig(model=str(bench_model(quick)), tp=tp, max_model_len=512, threads_per_device=threads,
                       kv_cache_memory=128 * MIB, max_num_batched_tokens=256 if quick else 2048)
    work = chat_workload(6, 8, 16) if quick else chat_workload(32, 16, 48, seed=2)
    with ModelGroup(cfg) as engine:
        streams = [engine.stream(messages=m, params=SamplingParams(max_tokens=n)) for m, n in work]
        for stream in streams:
            stream.result()
        info = engine.stats().replicas[0]
        return [rank_figures(pid, weights, info.kv_bytes_per_rank, act)
                for pid, weights, act in zip(info.pids, info.weight_bytes_per_rank,
                                             info.peak_activation_bytes_per_rank)]


@benchmark("memory_overhead", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    # The demo model's 9 heads and 3 KV heads admit TP 1 or 3.
    result: dict[str, Any] = {f"tp{tp}": full_load_run(tp, args.quick) for tp in ((1,) if args.quick else (1, 3))}
    result["overhead_mib_tp1"] = result["tp1"][0]["overhead_mib"]
    result["bare_torch"] = bare_torch()
    return result


if __name__ == "__main__":
    main()
