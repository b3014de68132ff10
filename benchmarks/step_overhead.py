"""Per decode step, the time rank 0 spends outside the model's forward (taking requests
in, scheduling, building the step plan, sending it to the other ranks, sampling) at
batch 1, 16 and 64 on the demo model, from the engine's own step counters. Target: at
most 10% of the step at batch 64.

    python benchmarks/step_overhead.py [--json] [--quick] [--tp N]

A window of pure decode steps is cut out of each run: it opens once every request of the
batch is running (all prompts went in one prefill step) and closes before the first
request finishes. `wall_step_ms` is the same window timed in the owner process, so a gap
between it and `step_ms` is time the counters do not see (sending outputs back, the
owner falling behind).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from typing import Any

from common import bench_model, bench_threads, benchmark
from mgpud.engine import EngineConfig, ModelGroup, RequestOutput, SamplingParams

from mgpud.records import ModelFigures

BATCHES = (1, 16, 64)
TARGET_FRACTION = 0.10


class Window:
    """Follows one request: (time, engine stats) when it reaches two token counts."""

    def __init__(self, engine: ModelGroup, open_at: int, close_at: int):
        self.engine = engine
        self.marks = {open_at: "open", close_at: "close"}
        self.seen: dict[str, tuple[float, ModelFigures]] = {}
        self.finished = threading.Event()

    def on_output(self, out: RequestOutput) -> None:
        # Runs on the engine's receiver thread right after it stored this step's stats.
        name = self.marks.get(out.completion_tokens)
        if name and name not in self.seen:
            self.seen[name] = (time.perf_counter(), self.engine.stats())
        if out.finished:
            self.finished.set()


def decode_window(engine: ModelGroup, batch: int, prompt_tokens: int, max_tokens: int,
                  seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    window = Window(engine, open_at=3, close_at=max_tokens - 1)
    prompts = [[rng.randrange(100, 20000) for _ in range(prompt_tokens)] for _ in range(batch)]
    engine.add_request(prompts[0], params=params, on_output=window.on_output)
    streams = [engine.stream(p, params=params) for p in prompts[1:]]
    window.finished.wait()
    for stream in streams:
        stream.result()
    (t0, a), (t1, b) = window.seen["open"], window.seen["close"]
    if a.running != batch or b.running != batch or a.waiting or b.waiting:
        raise RuntimeError(f"batch {batch} was not all running in the window: {a} / {b}")
    return _figures(a, b, t1 - t0)


def _figures(a: ModelFigures, b: ModelFigures, wall: float) -> dict[str, float]:
    steps = b.steps_total - a.steps_total
    step = b.step_seconds_total - a.step_seconds_total
    forward = b.forward_seconds_total - a.forward_seconds_total
    return {"steps": steps, "step_ms": 1000 * step / steps, "forward_ms": 1000 * forward / steps,
            "overhead_ms": 1000 * (step - forward) / steps, "overhead_fraction": (step - forward) / step,
            "wall_step_ms": 1000 * wall / steps, "wall_overhead_fraction": 1 - forward / wall}


@benchmark("step_overhead", __doc__, add_args=lambda ap: ap.add_argument(
    "--tp", type=int, default=1, help="tensor-parallel degree (the demo model: 1 or 3)"))
def main(args: argparse.Namespace) -> dict[str, Any]:
    threads = bench_threads(args.quick, args.tp)
    prompt_tokens, max_tokens = (8, 10) if args.quick else (64, 48)
    cfg = EngineConfig(model=str(bench_model(args.quick)), tp=args.tp, max_model_len=256, threads_per_device=threads,
                       kv_cache_memory=(256 if args.quick else 512) << 20, enable_prefix_caching=False,
                       max_num_batched_tokens=max(BATCHES) * prompt_tokens, max_num_seqs=max(BATCHES))
    result: dict[str, Any] = {}
    with ModelGroup(cfg) as engine:
        engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4))  # warm-up
        for batch in BATCHES:
            result[f"batch_{batch}"] = decode_window(engine, batch, prompt_tokens, max_tokens, seed=batch)
    result.update(overhead_fraction_at_64=result["batch_64"]["overhead_fraction"],
                  target_fraction=TARGET_FRACTION, tp=args.tp, threads_per_rank=threads,
                  prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    return result


if __name__ == "__main__":
    main()
