"""How fast the daemon answers `status`: idle, then while its engine is saturated with
generation, in one run. A real `mgpud` daemon with two CPU devices serves the demo model
(SmolLM2-135M) at tp=1 dp=1 on one of them, one thread, as a GPU would hold the model
while the host's cores serve the daemon (one device with both threads is slower here:
when anything else runs, the two threads wait on each other). For the loaded half, a
separate process keeps many streaming generate requests running, each on its own client
connection, while this process times `status` round trips on another connection.

    python benchmarks/control_latency.py [--json] [--quick]

Reports p50/p99/max of the round trips in ms, how many were timed, how many generations
ran (the fewest seen by any loaded `status`) and the tokens/s the engine produced while
it was being probed. Target: loaded p99 under 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from common import bench_model, bench_model_label, benchmark, chat_workload
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import AsyncClient, Client

MODEL = "smol"
DEVICES = "cpu:2"
PROBE_GAP = 0.01  # seconds between probes: samples spread over the run, not one burst


def saturate(runtime_dir: str, streams: int, max_tokens: int) -> None:
    """Keep `streams` generations running, one per connection, until terminated."""
    asyncio.run(_saturate(runtime_dir, streams, max_tokens))


async def _saturate(runtime_dir: str, streams: int, max_tokens: int) -> None:
    work = chat_workload(streams, max_tokens, max_tokens)

    async def keep_one(messages: list[dict[str, str]]) -> None:
        async with AsyncClient(runtime_dir, timeout=60.0) as client:
            while True:
                await client.stream("generate", model=MODEL, messages=messages, max_tokens=max_tokens,
                                    ignore_eos=True).wait()

    await asyncio.gather(*(keep_one(messages) for messages, _ in work))


def probe(client: Client, count: int) -> tuple[list[float], int]:
    """`count` status round trips: their times (seconds) and the fewest generations running."""
    times, fewest = [], None
    for _ in range(count):
        start = time.perf_counter()
        status = client.call("status")
        times.append(time.perf_counter() - start)
        running = status["generations_running"]
        fewest = running if fewest is None else min(fewest, running)
        time.sleep(PROBE_GAP)
    return times, fewest or 0


def figures(prefix: str, times: list[float]) -> dict[str, Any]:
    ms = np.array(times) * 1000
    return {f"{prefix}_p50_ms": float(np.percentile(ms, 50)), f"{prefix}_p99_ms": float(np.percentile(ms, 99)),
            f"{prefix}_max_ms": float(ms.max()), f"{prefix}_count": len(times)}


def generated(client: Client) -> int:
    return client.call("models")["models"][0]["stats"]["generation_tokens_total"]


def wait_saturated(client: Client, streams: int, timeout: float = 300.0) -> None:
    """Until every stream's generation is in the daemon and tokens come out of the engine."""
    deadline, before = time.monotonic() + timeout, generated(client)
    while client.call("status")["generations_running"] < streams or generated(client) == before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engine was not generating for {streams} streams after {timeout:.0f} s")
        time.sleep(0.1)


def probe_loaded(client: Client, load: Callable[..., None], args: tuple[Any, ...], streams: int,
                 count: int) -> tuple[list[float], int, float]:
    """`status` timings while `load(*args)` (another process) keeps `streams` generations
    running: (seconds per call, fewest generations seen running, tokens/s meanwhile)."""
    worker = multiprocessing.get_context("spawn").Process(target=load, args=args, daemon=True)
    worker.start()
    try:
        wait_saturated(client, streams)
        tokens, start = generated(client), time.perf_counter()
        times, fewest = probe(client, count)
        return times, fewest, (generated(client) - tokens) / (time.perf_counter() - start)
    finally:
        worker.terminate()
        worker.join()


def measure(daemon: DaemonProcess, count: int, streams: int, max_tokens: int) -> dict[str, Any]:
    with daemon.client(timeout=60.0) as client:
        probe(client, count // 10)  # warm-up: connection, first replies
        idle, _ = probe(client, count)
        loaded, fewest, rate = probe_loaded(client, saturate, (str(daemon.runtime_dir), streams, max_tokens),
                                            streams, count)
        client.call("unload", name=MODEL, force=True)
    return {**figures("idle", idle), **figures("loaded", loaded), "loaded_generations_running_min": fewest,
            "streams": streams, "loaded_tokens_per_s": rate}


@benchmark("control_latency", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    count, streams, max_tokens = (50, 4, 32) if args.quick else (2000, 16, 256)
    with DaemonProcess("--log-level", "warning", devices=DEVICES) as daemon:
        daemon.call("load", model=str(bench_model(args.quick)), name=MODEL, tp=1, dp=1, max_model_len=1024,
                    kv_cache_memory=256 << 20)
        result = measure(daemon, count, streams, max_tokens)
    return {**result, "devices": DEVICES, "model": f"{bench_model_label(args.quick)}, tp=1 dp=1 on cpu:0"}


if __name__ == "__main__":
    main()
