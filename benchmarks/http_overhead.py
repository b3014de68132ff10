"""What the OpenAI-compatible HTTP API costs next to the ZeroMQ control socket, on one
daemon in one run. A real `mgpud` daemon with two CPU devices serves the demo model
(SmolLM2-135M) at tp=1 dp=1 on one of them, one thread (as in control_latency.py: the
model's device is busy, the other core runs the daemon and the clients). The workload is
throughput.py's: 64 chat requests of 16 to 256 output tokens, greedy, all sent at once,

- through HTTP: `openai.AsyncOpenAI`, 64 concurrent streaming chat completions;
- through the control socket: `AsyncClient`, 64 concurrent `generate` streams;

then, while a separate process keeps 64 HTTP streams running, `status` round trips on the
control socket are timed.

    python benchmarks/http_overhead.py [--json] [--quick]

Reports output tokens/s of each path, `ratio` = http / zmq (target >= 0.95) and
`control_p99_ms`, the p99 `status` latency under the HTTP load (target < 10).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
from common import bench_model, bench_model_label, benchmark, chat_workload
from control_latency import probe, probe_loaded
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import AsyncClient

MODEL = "smol"
DEVICES = "cpu:2"
Work = list[tuple[list[dict[str, str]], int]]


def _http(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)


async def _http_one(client: openai.AsyncOpenAI, messages: list[dict[str, str]], max_tokens: int,
                    **extra: Any) -> int:
    """Stream one chat completion to its end; its completion tokens."""
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_body=extra or None)
    tokens = 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens


async def via_http(url: str, work: Work) -> tuple[float, int]:
    """(seconds, generated tokens) for the whole workload sent at once over HTTP."""
    async with _http(url) as client:
        await _http_one(client, [{"role": "user", "content": "Hello"}], 4)  # warm-up: connections, paths
        start = time.perf_counter()
        tokens = await asyncio.gather(*(_http_one(client, m, n) for m, n in work))
        return time.perf_counter() - start, sum(tokens)


async def via_zmq(runtime_dir: str, work: Work) -> tuple[float, int]:
    """(seconds, generated tokens) for the same workload over the control socket."""
    async def one(client: AsyncClient, messages: list[dict[str, str]], max_tokens: int) -> int:
        stream = client.stream("generate", model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0)
        async for _ in stream:
            pass
        return stream.result["usage"]["completion_tokens"]

    async with AsyncClient(runtime_dir, timeout=600.0) as client:
        await one(client, [{"role": "user", "content": "Hello"}], 4)  # warm-up
        start = time.perf_counter()
        tokens = await asyncio.gather(*(one(client, m, n) for m, n in work))
        return time.perf_counter() - start, sum(tokens)


def http_load(url: str, streams: int, max_tokens: int) -> None:
    """Keep `streams` HTTP streams running until terminated (its own process)."""
    async def keep_all() -> None:
        async with _http(url) as client:
            async def keep_one(messages: list[dict[str, str]]) -> None:
                while True:
                    await _http_one(client, messages, max_tokens, ignore_eos=True)

            await asyncio.gather(*(keep_one(m) for m, _ in chat_workload(streams, max_tokens, max_tokens)))

    asyncio.run(keep_all())


def control_under_http(daemon: DaemonProcess, url: str, count: int, streams: int, max_tokens: int
                       ) -> dict[str, Any]:
    with daemon.client(timeout=60.0) as client:
        probe(client, count // 10)  # warm-up: connection, first replies
        times, fewest, rate = probe_loaded(client, http_load, (url, streams, max_tokens), streams, count)
    ms = np.array(times) * 1000
    return {"control_p50_ms": float(np.percentile(ms, 50)), "control_p99_ms": float(np.percentile(ms, 99)),
            "control_max_ms": float(ms.max()), "control_count": len(times),
            "control_http_streams_min": fewest, "control_tokens_per_s": rate}


@contextlib.contextmanager
def loaded(daemon: DaemonProcess, model: str) -> Iterator[None]:
    """`model` loaded as throughput.py's engine is, unloaded afterwards."""
    daemon.call("load", model=model, name=MODEL, tp=1, dp=1, max_model_len=1024,
                kv_cache_memory=1 << 30, max_num_batched_tokens=1024)
    try:
        yield
    finally:
        daemon.call("unload", name=MODEL, force=True)


def fresh(daemon: DaemonProcess, model: str, quick: bool) -> contextlib.AbstractContextManager[None]:
    """A measured pass's own load of `model`; in a smoke run, the one load already there."""
    return contextlib.nullcontext() if quick else loaded(daemon, model)


@benchmark("http_overhead", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    work = chat_workload(4, 4, 8) if args.quick else chat_workload(64, 16, 256)
    count, streams, max_tokens = (50, 4, 32) if args.quick else (2000, 64, 256)
    with DaemonProcess("--log-level", "warning", devices=DEVICES, http="127.0.0.1:0") as daemon:
        url, model = daemon.http_url, str(bench_model(args.quick))
        # Each pass on a freshly loaded model: the second must not find the first's prompts
        # in the prefix cache. A smoke run, which only proves that the passes work, loads once.
        with loaded(daemon, model) if args.quick else contextlib.nullcontext():
            with fresh(daemon, model, args.quick):
                z_s, z_gen = asyncio.run(via_zmq(str(daemon.runtime_dir), work))
            with fresh(daemon, model, args.quick):
                h_s, h_gen = asyncio.run(via_http(url, work))
            with fresh(daemon, model, args.quick):
                control = control_under_http(daemon, url, count, streams, max_tokens)
    return {"http_tok_s": h_gen / h_s, "zmq_tok_s": z_gen / z_s, "ratio": (h_gen / h_s) / (z_gen / z_s),
            **control, "requests": len(work), "http_generated_tokens": h_gen, "zmq_generated_tokens": z_gen,
            "http_seconds": h_s, "zmq_seconds": z_s, "control_streams": streams, "devices": DEVICES,
            "model": f"{bench_model_label(args.quick)}, tp=1 dp=1 on cpu:0"}


if __name__ == "__main__":
    main()
