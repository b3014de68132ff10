"""Shared pieces of the benchmarks: workloads, the machine's matmul peak, JSON output."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

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


def matmul_peak_flops(threads: int, size: int = 1024, seconds: float = 1.0) -> float:
    """Best fp32 GEMM FLOP/s this process reaches with `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def emit(name: str, result: dict, as_json: bool, quick: bool = False) -> None:
    """Print the result (one JSON object with --json) and keep a copy under results/
    (quick smoke runs go to NAME.quick.json, so they never replace a real measurement)."""
    RESULTS.mkdir(exist_ok=True)
    file = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    file.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {_fmt(value)}")
    sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "  ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)
