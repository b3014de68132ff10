"""Shared pieces of the benchmarks: workloads, the machine's matmul peak, and `benchmark`,
the command line every benchmark script has (--json, --quick, its result file)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"

_TOPICS = ["the ocean", "volcanoes", "a small bakery", "the history of paper", "learning to swim",
           "black holes", "a city at night", "honeybees", "the first computers", "mountain weather",
           "chess openings", "a lighthouse keeper", "rainforests", "the moon landing", "coffee",
           "a lost key"]
_ASKS = ["Write a short poem about {t}.", "Explain {t} to a child.", "Give three facts about {t}.",
         "Tell a story about {t}, with a twist at the end. Make it vivid, with a named hero, a clear "
         "setting, some dialogue and a surprising but fair ending that a reader could have guessed.",
         "What should a beginner know about {t}? Answer as a numbered list, and keep each point to "
         "one sentence. Then add one sentence on where to learn more about {t} and why it matters."]


def chat_workload(n: int, min_tokens: int, max_tokens: int, seed: int = 0
                  ) -> list[tuple[list[dict[str, str]], int]]:
    """n (messages, max_tokens) pairs: chat prompts of varied lengths and output budgets."""
    rng = random.Random(seed)
    work = []
    for i in range(n):
        ask = _ASKS[i % len(_ASKS)].format(t=_TOPICS[rng.randrange(len(_TOPICS))])
        work.append(([{"role": "user", "content": ask}], rng.randint(min_tokens, max_tokens)))
    return work


def matmul_peak_flops(threads: int, size: int = 1024, seconds: float = 1.0,
                      dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM FLOP/s this process reaches with `threads` threads in `dtype`."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def result_file(name: str, quick: bool, suffix: str = ".json") -> Path:
    """results/NAME.json, or results/NAME.quick.json for a smoke run, so that one never
    replaces a real measurement; `suffix` names a benchmark's other outputs the same way."""
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / f"{name}{'.quick' if quick else ''}{suffix}"


def benchmark(name: str, doc: str | None, *, add_args: Callable[[argparse.ArgumentParser], object] | None = None,
              quick_help: str = "a small smoke run", show: Callable[[dict[str, Any]], None] | None = None,
              save: bool = True) -> Callable[[Callable[[argparse.Namespace], dict[str, Any]]], Callable[..., None]]:
    """Turn `measure(args) -> result` into the benchmark's `main(argv=None)`.

    `main` parses --json, --quick (`quick_help`) and whatever `add_args` adds, runs
    `measure`, keeps the result in `result_file(name, args.quick)` unless `save` is off,
    and prints it: one JSON object with --json (run_all.py and the tests read the last
    line), else `show(result)`, by default a `key: value` line per figure.
    """
    def wrap(measure: Callable[[argparse.Namespace], dict[str, Any]]) -> Callable[..., None]:
        def main(argv: list[str] | None = None) -> None:
            ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
            ap.add_argument("--json", action="store_true", help="print one JSON object")
            ap.add_argument("--quick", action="store_true", help=quick_help)
            if add_args is not None:
                add_args(ap)
            args = ap.parse_args(argv)
            result = measure(args)
            if save:
                result_file(name, args.quick).write_text(json.dumps(result, indent=2) + "\n")
            if args.json:
                print(json.dumps(result))
            else:
                (show or _show)(result)
            sys.stdout.flush()
        return main
    return wrap


def _show(result: dict[str, Any]) -> None:
    for key, value in result.items():
        print(f"{key:>28}: {_fmt(value)}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "  ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)
