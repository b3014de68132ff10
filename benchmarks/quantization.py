"""Quantized weights on the demo model (tp=1, one CPU device holding every core): the
default dtype load, a bf16 load, and int8 and fp8 loads (`--quantization`), each measured
in the same run for

- `weight_bytes`: what the rank holds for its weights, and `bytes_vs_bf16`, that over
  the bf16 load's (target for int8 and fp8: <= 0.55; the LM head, which is SmolLM2's
  tied embedding, is 8-bit too; norms and the scales keep the ratio above 0.5),
- `perplexity` of lighthouse.txt (an original story, ~1000 tokens: a shorter text
  measures noise) through prompt logprobs, and `perplexity_ratio` over the default
  load's (targets: int8 <= 1.01, fp8 <= 1.03),
- `decode_tok_s`: single-stream greedy decode, tokens after the first over their wall
  time (the best of a few runs), and `decode_speedup` over the default load's (target for
  int8: >= 1.5; fp8 weights are widened per matmul on CPUs, correct but not fast).

    python benchmarks/quantization.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from common import bench_model, bench_threads, benchmark
from mgpud.engine import EngineConfig, ModelGroup, SamplingParams

TEXT = Path(__file__).with_name("lighthouse.txt")
PROMPT = [{"role": "user", "content": "Tell me a story about a lighthouse keeper and a storm."}]
LOADS = {"default": {}, "bf16": {"dtype": "bfloat16"}, "int8": {"quantization": "int8"},
         "fp8": {"quantization": "fp8"}}
TARGETS = {"int8_bytes_vs_bf16": 0.55, "fp8_bytes_vs_bf16": 0.55, "int8_perplexity_ratio": 1.01,
           "fp8_perplexity_ratio": 1.03, "int8_decode_speedup": 1.5}


def perplexity(group: ModelGroup) -> float:
    ids = group.model.tokenizer.encode(TEXT.read_text())
    out = next(iter(group.stream(ids, params=SamplingParams(max_tokens=1, prompt_logprobs=0))))
    logprobs = [e.logprob for e in out.prompt_logprobs[1:]]
    return math.exp(-sum(logprobs) / len(logprobs))


def decode_rate(group: ModelGroup, tokens: int, repeats: int) -> float:  # tokens/s after the first
    best = 0.0
    for _ in range(repeats):
        first = last = None
        made = 0
        for out in group.stream(messages=PROMPT, params=SamplingParams(max_tokens=tokens, ignore_eos=True)):
            last = time.perf_counter()
            first = first or last
            made += len(out.new_token_ids)
        best = max(best, (made - 1) / (last - first))
    return best


def measure_load(model: str, settings: dict[str, Any], tokens: int, repeats: int, quick: bool) -> dict[str, Any]:
    # The text's ~1000 tokens in one prefill, their K/V in the cache (~46 KB each in float32).
    cfg = EngineConfig(model=model, max_model_len=1024, kv_cache_memory=64 << 20,
                       threads_per_device=bench_threads(quick), **settings)
    with ModelGroup(cfg) as group:
        replica = group.stats().replicas[0]
        if not quick:
            decode_rate(group, 4, 1)
        return {"dtype": replica.dtype, "quantization": replica.quantization,
                "weight_bytes": replica.weight_bytes_per_rank[0], "perplexity": perplexity(group),
                "decode_tok_s": decode_rate(group, tokens, repeats)}


@benchmark("quantization", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    tokens, repeats = (4, 1) if args.quick else (64, 3)
    model = str(bench_model(args.quick))
    loads = {name: measure_load(model, settings, tokens, repeats, args.quick) for name, settings in LOADS.items()}
    base, bf16 = loads["default"], loads["bf16"]
    for name in ("int8", "fp8"):
        q = loads[name]
        q["bytes_vs_bf16"] = q["weight_bytes"] / bf16["weight_bytes"]
        q["perplexity_ratio"] = q["perplexity"] / base["perplexity"]
        q["decode_speedup"] = q["decode_tok_s"] / base["decode_tok_s"]
    return {**loads, "targets": TARGETS, "devices": "cpu:1", "decode_tokens": tokens}


if __name__ == "__main__":
    main()
