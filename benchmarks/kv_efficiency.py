"""How well the paged KV cache uses its memory, on the demo model.

    python benchmarks/kv_efficiency.py [--json] [--quick]

Admission: a fixed KV budget and requests of random prompt and output lengths, all
submitted at once. `peak_running` is the most sequences the engine held at once; the
theoretical maximum is what the same scheduler admits for the same lengths when the
cache wastes nothing (1-token blocks, the same bytes), replayed without the model. The
waste fraction is 1 - peak / maximum (the vLLM paper reports under 4% waste). The replay
at the engine's block size also gives the share of allocated KV slots holding no token,
and `first_fill_running` how many prompts, in arrival order, fit at once in whole blocks
and in single tokens: the rounding of prompts to blocks alone bounds the peak there.

Prefix caching: requests sharing a long system prompt, burst after one warm-up request,
with `enable_prefix_caching` on and off. Target: at least 2x the throughput with it on.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from common import bench_model, bench_threads, benchmark, chat_workload
from mgpud.engine import EngineConfig, ModelConfig, ModelGroup, SamplingParams
from mgpud.engine.core.kv import BlockManager
from mgpud.engine.core.scheduler import Limits, Scheduler
from mgpud.engine.core.sequence import Sequence

BLOCK_SIZE = 16
MAX_SEQS = 64
TARGET_WASTE = 0.04
TARGET_SPEEDUP = 2.0


def random_lengths(n: int, prompt: tuple[int, int], output: tuple[int, int], seed: int = 0
                   ) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(*prompt), rng.randint(*output)) for _ in range(n)]


def replay(work: list[tuple[int, int]], capacity_tokens: int, block_size: int, limits: Limits
           ) -> dict[str, float]:
    """Run the engine's scheduler over `work` with fake tokens: peak running sequences and
    the share of allocated KV slots that held no token, over all steps."""
    blocks = BlockManager(capacity_tokens // block_size, block_size, prefix_caching=False)
    scheduler = Scheduler(limits, blocks)
    for i, (prompt, output) in enumerate(work):
        params = SamplingParams(max_tokens=output, ignore_eos=True)
        scheduler.add(Sequence(f"r{i}", [7] * prompt, prompt, params, frozenset()))
    peak, held, slots = 0, 0, 0
    while scheduler.has_work():
        batch = scheduler.schedule()
        peak = max(peak, len(scheduler.running))
        sampling = [seq for seq, n in batch if seq.num_computed_tokens + n == seq.num_tokens]
        scheduler.update(batch, [7] * len(sampling))
        held += sum(seq.num_computed_tokens for seq in scheduler.running)
        slots += blocks.usage()[0] * block_size
    return {"peak_running": peak, "slot_waste_fraction": 1 - held / slots if slots else 0.0}


def first_fill(work: list[tuple[int, int]], capacity_tokens: int, block_size: int) -> int:
    """How many requests, in arrival order, have their whole prompts fit in the cache at
    once (blocks rounded up), plus one partly prefilled if a block is left: the running
    count the first fill can reach under any first-come-first-served admission."""
    free, count = capacity_tokens // block_size, 0
    for prompt, _ in work:
        need = -(-prompt // block_size)
        if need > free:
            return count + (free > 0)
        free, count = free - need, count + 1
    return count


def engine_peak(model: str, work: list[tuple[int, int]], blocks: int, limits: Limits,
                threads: int) -> dict[str, int]:
    itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[EngineConfig(model=model).dtype_name(on_cuda=False)]
    per_block = ModelConfig.from_dir(Path(model)).kv_bytes_per_token(itemsize) * BLOCK_SIZE
    cfg = EngineConfig(model=model, max_model_len=limits.max_model_len, kv_cache_memory=blocks * per_block,
                       block_size=BLOCK_SIZE, max_num_batched_tokens=limits.max_num_batched_tokens,
                       max_num_seqs=limits.max_num_seqs, threads_per_device=threads, enable_prefix_caching=False)
    rng = random.Random(1)
    with ModelGroup(cfg) as engine:
        assert engine.stats().replicas[0].num_kv_blocks == blocks
        streams = [engine.stream([rng.randrange(100, 20000) for _ in range(p)],
                                      params=SamplingParams(max_tokens=o, ignore_eos=True)) for p, o in work]
        for stream in streams:
            stream.result()
        stats = engine.stats()
    return {"peak_running": stats.peak_running, "preemptions": stats.preemptions}


def admission(model: str, quick: bool, batched: int, threads: int) -> dict[str, Any]:
    if quick:
        work, blocks, limits = random_lengths(12, (8, 48), (4, 16)), 10, Limits(MAX_SEQS, batched, 128)
    else:
        work, blocks, limits = random_lengths(48, (16, 192), (16, 128)), 128, Limits(MAX_SEQS, batched, 512)
    ideal = replay(work, blocks * BLOCK_SIZE, 1, limits)
    paged = replay(work, blocks * BLOCK_SIZE, BLOCK_SIZE, limits)
    measured = engine_peak(model, work, blocks, limits, threads)
    return {"requests": len(work), "kv_blocks": blocks, "block_size": BLOCK_SIZE,
            "peak_running": measured["peak_running"], "theoretical_max_running": ideal["peak_running"],
            "waste_fraction": 1 - measured["peak_running"] / ideal["peak_running"],
            "replay_peak_running": paged["peak_running"],
            "first_fill_running": {"ideal": first_fill(work, blocks * BLOCK_SIZE, 1),
                                   "paged": first_fill(work, blocks * BLOCK_SIZE, BLOCK_SIZE)},
            "slot_waste_fraction": paged["slot_waste_fraction"], "preemptions": measured["preemptions"]}


def system_prompt(rules: int) -> str:
    lines = [f"Rule {i + 1}: when the user asks about topic number {i + 1}, answer politely, "
             "briefly and truthfully, and never invent sources." for i in range(rules)]
    return "You are a helpful assistant for a small library.\n" + "\n".join(lines)


def shared_prefix_run(model: str, caching: bool, sizes: tuple[int, int, int], batched: int,
                      threads: int) -> dict[str, Any]:
    requests, rules, max_tokens = sizes
    cfg = EngineConfig(model=model, max_model_len=1024, kv_cache_memory=512 << 20, threads_per_device=threads,
                       max_num_batched_tokens=batched, max_num_seqs=MAX_SEQS, enable_prefix_caching=caching)
    system = {"role": "system", "content": system_prompt(rules)}
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    with ModelGroup(cfg) as engine:
        engine.stream(messages=[system, {"role": "user", "content": "Hello"}], params=params).result()
        start = time.perf_counter()
        streams = [engine.stream(messages=[system, *m], params=params)
                   for m, _ in chat_workload(requests, 1, 1, seed=3)]
        finals = [s.result() for s in streams]
        elapsed = time.perf_counter() - start
        stats = engine.stats()
    return {"seconds": elapsed, "requests_per_s": requests / elapsed,
            "output_tokens_per_s": sum(f[2].completion_tokens for f in finals) / elapsed,
            "prompt_tokens_mean": sum(f[2].prompt_tokens for f in finals) / requests,
            "hit_rate": stats.prefix_cache_hits / max(1, stats.prefix_cache_queries),
            "outputs": [f[0] for f in finals]}


def prefix_caching(model: str, quick: bool, batched: int, threads: int) -> dict[str, Any]:
    sizes = (4, 6, 4) if quick else (16, 16, 16)  # requests, system prompt rules, max_tokens
    off = shared_prefix_run(model, False, sizes, batched, threads)
    on = shared_prefix_run(model, True, sizes, batched, threads)
    identical = on.pop("outputs") == off.pop("outputs")
    return {"requests": sizes[0], "max_tokens": sizes[2], "on": on, "off": off,
            "throughput_ratio": on["requests_per_s"] / off["requests_per_s"], "outputs_identical": identical}


@benchmark("kv_efficiency", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    model, threads = str(bench_model(args.quick)), bench_threads(args.quick)
    # The step budget also sizes each engine's start-up profile: small for a smoke run.
    batched = 256 if args.quick else 512
    packing = admission(model, args.quick, batched, threads)
    prefix = prefix_caching(model, args.quick, batched, threads)
    return {
        "waste_fraction": packing["waste_fraction"], "prefix_caching_speedup": prefix["throughput_ratio"],
        "target_waste_fraction": TARGET_WASTE, "target_speedup": TARGET_SPEEDUP,
        "admission": packing, "prefix_caching": prefix,
    }


if __name__ == "__main__":
    main()
