"""Data- and tensor-parallel scaling on CPU devices, one run: the same chat workload on
the demo model at tp=1 dp=1, tp=1 dp=2 and tp=3 dp=1 (one thread per device), plus
tp=1 dp=1 with both cores, for tokens/s and TTFT p95. SmolLM2's 9 heads and 3 KV heads
admit TP 1 or 3 only, so the TP comparison is tp=3 (three ranks on this machine's cores).

    python benchmarks/scaling.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import bench_model, benchmark, chat_workload
from mgpud.engine import EngineConfig, SamplingParams
from mgpud.engine.serving.group import ModelGroup
from mgpud.engine.serving.pool import DevicePool

SHAPES = [("tp1_dp1", 1, 1, 1), ("tp1_dp2", 1, 2, 1), ("tp3_dp1", 3, 1, 1), ("tp1_dp1_2threads", 1, 1, 2)]


def run(model: str, tp: int, dp: int, threads: int, work) -> dict[str, float]:
    cfg = EngineConfig(model=model, tp=tp, max_model_len=1024, kv_cache_memory=256 << 20,
                       threads_per_device=threads)
    with ModelGroup(cfg, dp, DevicePool([f"cpu:{i}" for i in range(max(2, tp * dp))])) as group:
        group.generate([[1, 2, 3]], SamplingParams(max_tokens=2))  # warm-up
        start = time.perf_counter()
        streams = [group.stream(messages=m, params=SamplingParams(max_tokens=n)) for m, n in work]
        tokens = sum(s.result()[2].completion_tokens for s in streams)
        elapsed = time.perf_counter() - start
        figures = group.stats()
    return {"tokens_per_s": tokens / elapsed, "ttft_p95_ms": figures.ttft_p95_ms,
            "tpot_p50_ms": figures.tpot_p50_ms, "seconds": elapsed, "generated_tokens": tokens}


@benchmark("scaling", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    model = str(bench_model(args.quick))
    work = chat_workload(2, 2, 4) if args.quick else chat_workload(32, 32, 96, seed=1)
    return {name: run(model, tp, dp, threads, work) for name, tp, dp, threads in SHAPES}


if __name__ == "__main__":
    main()
