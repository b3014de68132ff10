"""How an expert-parallel MoE layer combines its ranks' outputs over gloo (CPU): the
all-reduce the engine uses (`engine/core/layers/moe.py`) against an all-to-all.

    python benchmarks/moe_combine.py [--json] [--quick]

Two gloo processes, float32 activations of hidden size 512, top-2 routing, tokens per
step 1 (decode) to 256 (prefill). `allreduce_us`: one all-reduce of the [T, H] partial
outputs, what the engine does. `all_to_all_us`: the all-to-all dispatch and combine an
EP layer would need if activations lived on one rank only: each rank sends half of the
T x top-k routed rows to the other and gets as many back, twice. Medians of many calls.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import benchmark

HIDDEN, TOP_K, WORLD = 512, 2, 2


def _time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _worker(rank: int, init: str, sizes: list[int], repeats: int, out: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    rows = {}
    for t in sizes:
        partial = torch.randn(t, HIDDEN)
        routed = torch.randn(t * TOP_K, HIDDEN)
        received = torch.empty_like(routed)

        def all_to_all(received: torch.Tensor = received, routed: torch.Tensor = routed) -> None:
            for _ in range(2):  # dispatch, then combine
                dist.all_to_all_single(received, routed)

        rows[t] = {"allreduce_us": _time(lambda partial=partial: dist.all_reduce(partial), repeats),
                   "all_to_all_us": _time(all_to_all, repeats)}
    if rank == 0:
        out.put(rows)
    dist.destroy_process_group()


@benchmark("moe_combine", __doc__, quick_help="fewer calls and sizes")
def measure(args: Any) -> dict[str, Any]:
    sizes, repeats = ([1, 64], 20) if args.quick else ([1, 16, 64, 256], 200)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        procs = [ctx.Process(target=_worker, args=(r, init, sizes, repeats, out)) for r in range(WORLD)]
        for p in procs:
            p.start()
        rows = out.get(timeout=600)
        for p in procs:
            p.join()
    return {"torch": torch.__version__, "hidden": HIDDEN, "top_k": TOP_K,
            "tokens": {str(t): row for t, row in rows.items()}}


if __name__ == "__main__":
    measure()
