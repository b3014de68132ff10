"""Serving through the daemon's socket, as a user sees it: a real `mgpud` daemon on CPU
devices serving the demo model (SmolLM2-135M) at tp=1 with dp=1 and dp=2, driven by
chat requests of varied lengths arriving as a Poisson process at increasing rates until
the daemon saturates. The daemon gets one CPU device per core (at least two), each with
one thread: dp=1 uses one core, dp=2 two.

    python benchmarks/serving.py [--json] [--quick]

Per rate: requests/s achieved, output tokens/s, TTFT p50/p95 and time per output token
p50/p95 (timed by the client, from sending the request), and errors. The knee is the
last rate before the curve bends: the next rate raises tokens/s by under a quarter of
what it adds to the load while TTFT p95 at least doubles, the seeds' signal to scale.
The curves go to results/serving.png (serving.quick.png for --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, bench_model, benchmark, chat_workload, result_file
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import AsyncClient, MgpudError

MODEL = "smol"
SATURATED = 0.7  # achieved / offered request rate below which the daemon is saturated


@dataclass
class Sample:
    ttft: float | None = None  # seconds
    tpot: float | None = None  # seconds per output token after the first
    tokens: int = 0
    error: str | None = None
    done: float = 0.0  # perf_counter at the end


async def one_request(client: AsyncClient, messages: list[dict[str, str]], max_tokens: int) -> Sample:
    sample, first, start = Sample(), None, time.perf_counter()
    try:
        stream = client.stream("generate", model=MODEL, messages=messages, max_tokens=max_tokens)
        async for frame in stream:
            if first is None and frame.get("token_ids"):
                first = time.perf_counter()
        sample.tokens = stream.result["usage"]["completion_tokens"]
    except MgpudError as exc:
        sample.error = exc.code
    sample.done = time.perf_counter()
    if first is not None:
        sample.ttft = first - start
        if sample.tokens > 1:
            sample.tpot = (sample.done - first) / (sample.tokens - 1)
    return sample


async def run_rate(client: AsyncClient, rate: float, count: int, max_tokens: int, seed: int) -> dict[str, Any]:
    """`count` requests with exponential gaps of mean 1/rate; figures once all are done."""
    rng = random.Random(seed)
    tasks, start = [], time.perf_counter()
    for messages, n in chat_workload(count, max(1, max_tokens // 8), max_tokens, seed=seed):
        tasks.append(asyncio.create_task(one_request(client, messages, n)))
        await asyncio.sleep(rng.expovariate(rate))
    samples = await asyncio.gather(*tasks)
    return figures(rate, samples, max(s.done for s in samples) - start)


def _ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1000) if values else None


def figures(rate: float, samples: list[Sample], elapsed: float) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None]
    ttft = [s.ttft for s in ok if s.ttft is not None]
    tpot = [s.tpot for s in ok if s.tpot is not None]
    return {"offered_rps": rate, "requests": len(samples), "achieved_rps": len(ok) / elapsed,
            "output_tokens_per_s": sum(s.tokens for s in ok) / elapsed,
            "ttft_p50_ms": _ms(ttft, 50), "ttft_p95_ms": _ms(ttft, 95),
            "tpot_p50_ms": _ms(tpot, 50), "tpot_p95_ms": _ms(tpot, 95),
            "errors": len(samples) - len(ok), "error_codes": sorted({s.error for s in samples if s.error})}


async def sweep(runtime_dir: Path, rates: list[float], per_rate: tuple[int, int, int], max_tokens: int
                ) -> list[dict[str, Any]]:
    """Rates in order until one saturates the daemon (that one included)."""
    low, high, seconds = per_rate
    points = []
    async with AsyncClient(runtime_dir, timeout=30.0) as client:
        await client.call("generate", model=MODEL, prompt="Hello", max_tokens=2)  # warm-up
        for i, rate in enumerate(rates):
            count = min(high, max(low, round(rate * seconds)))
            points.append(await run_rate(client, rate, count, max_tokens, seed=i))
            if points[-1]["achieved_rps"] < SATURATED * rate:
                break
    return points


def knee(points: list[dict[str, Any]]) -> float | None:
    for prev, cur in itertools.pairwise(points):
        load_gain = cur["offered_rps"] / prev["offered_rps"] - 1
        token_gain = cur["output_tokens_per_s"] / max(prev["output_tokens_per_s"], 1e-9) - 1
        if (token_gain < 0.25 * load_gain and prev["ttft_p95_ms"] and cur["ttft_p95_ms"]
                and cur["ttft_p95_ms"] >= 2 * prev["ttft_p95_ms"]):
            return prev["offered_rps"]
    return None


def plot(curves: dict[str, dict[str, Any]], path: Path) -> bool:
    """Both curves into a PNG; False when matplotlib (the `bench` extra) is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, (tok_ax, ttft_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        rates = [p["offered_rps"] for p in curve["points"]]
        for ax, key in ((tok_ax, "output_tokens_per_s"), (ttft_ax, "ttft_p95_ms")):
            line, = ax.plot(rates, [p[key] for p in curve["points"]], marker="o", label=name)
            if curve["knee_rps"] is not None:
                ax.axvline(curve["knee_rps"], color=line.get_color(), linestyle=":", label=f"{name} knee")
    tok_ax.set(ylabel="output tokens/s", title="Throughput")
    ttft_ax.set(ylabel="TTFT p95 (ms)", title="Time to first token", yscale="log")
    for ax in (tok_ax, ttft_ax):
        ax.set_xscale("log", base=2)  # the rates double
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("offered requests/s")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("mgpud serving SmolLM2-135M on CPU devices (tp=1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def serve_shape(daemon: DaemonProcess, model: str, dp: int, rates: list[float], per_rate: tuple[int, int, int],
                max_tokens: int, batched_tokens: int) -> dict[str, Any]:
    daemon.call("load", model=model, name=MODEL, tp=1, dp=dp, max_model_len=1024, kv_cache_memory=256 << 20,
                max_num_batched_tokens=batched_tokens)
    try:
        points = asyncio.run(sweep(daemon.runtime_dir, rates, per_rate, max_tokens))
    finally:
        daemon.call("unload", name=MODEL, force=True)
    return {"points": points, "knee_rps": knee(points),
            "max_output_tokens_per_s": max(p["output_tokens_per_s"] for p in points)}


@benchmark("serving", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    # The quick run's small step budget keeps each replica's start-up profile short.
    if args.quick:
        rates, per_rate, max_tokens, batched = [4.0, 16.0], (3, 3, 3), 6, 256
    else:
        rates, per_rate, max_tokens, batched = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], (16, 48, 30), 128, 2048
    cores, model = os.cpu_count() or 1, str(bench_model(args.quick))
    with DaemonProcess("--log-level", "warning", devices=f"cpu:{max(2, cores)}") as daemon:
        curves = {f"dp{dp}": serve_shape(daemon, model, dp, rates, per_rate, max_tokens, batched) for dp in (1, 2)}
    png = result_file("serving", args.quick, ".png")
    plotted = plot(curves, png)
    if not plotted:
        print("no plot: matplotlib is missing (pip install 'mgpud[bench]')", file=sys.stderr)
    return {**curves, "plot": str(png.relative_to(RESULTS.parent)) if plotted else None,
            "devices": f"cpu:{max(2, cores)}"}


if __name__ == "__main__":
    main()
