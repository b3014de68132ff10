"""Offline throughput on the demo model: mgpud (TP=1) against transformers' batched
generate, on the same chat prompts, in one run, plus mgpud's share of the matmul peak.

    python benchmarks/throughput.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
from common import benchmark, chat_workload, matmul_peak_flops
from mgpud.engine import EngineConfig, ModelConfig, ModelGroup, SamplingParams
from mgpud.engine.store.demo import demo_model_dir


def run_mgpud(model: str, work, threads: int, dtype: str = "float32") -> tuple[float, int, int]:
    """(seconds, generated tokens, prompt tokens) for the whole workload submitted at once."""
    cfg = EngineConfig(model=model, max_model_len=1024, threads_per_device=threads, dtype=dtype,
                       kv_cache_memory=1 << 30, max_num_batched_tokens=1024)
    with ModelGroup(cfg) as eng:
        eng.generate([[1, 2, 3]], SamplingParams(max_tokens=4))  # warm-up
        start = time.perf_counter()
        streams = [eng.stream(messages=m, params=SamplingParams(max_tokens=n)) for m, n in work]
        finals = [s.result()[2] for s in streams]
        elapsed = time.perf_counter() - start
    return elapsed, sum(f.completion_tokens for f in finals), sum(f.prompt_tokens for f in finals)


def run_transformers(model: str, work, threads: int, batch: int) -> tuple[float, int]:
    """(seconds, useful generated tokens): batches of `batch` in arrival order, left-padded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    eos = hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    useful = 0
    start = time.perf_counter()
    for i in range(0, len(work), batch):
        chunk = work[i:i + batch]
        texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = hf.generate(**enc, max_new_tokens=max(n for _, n in chunk), do_sample=False,
                              pad_token_id=tok.pad_token_id or min(eos))
        for row, (_, n) in zip(out[:, enc["input_ids"].shape[1]:].tolist(), chunk):
            cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
            useful += min(cut, n)
    return time.perf_counter() - start, useful


@benchmark("throughput", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    threads = os.cpu_count() or 1
    model = str(demo_model_dir())
    work = chat_workload(4, 4, 8) if args.quick else chat_workload(64, 16, 256)
    peak = matmul_peak_flops(threads)
    m_s, m_gen, m_prompt = run_mgpud(model, work, threads)
    t_s, t_gen = run_transformers(model, work, threads, batch=32)
    # Not the comparison (transformers runs fp32): what the same engine does with bf16
    # weights on a CPU that has bf16 matrix instructions.
    b_s, b_gen, _ = run_mgpud(model, work, threads, dtype="bfloat16")
    cfg = ModelConfig.from_dir(model)
    embed = cfg.vocab_size * cfg.hidden_size
    # Every processed token runs the decoder layers; only sampled ones run the LM head.
    flops = 2 * (cfg.param_count() - embed) * (m_prompt + m_gen) + 2 * embed * m_gen
    return {
        "mgpud_tok_s": m_gen / m_s, "transformers_tok_s": t_gen / t_s,
        "ratio": (m_gen / m_s) / (t_gen / t_s), "roofline_fraction": flops / m_s / peak,
        "matmul_peak_gflops": peak / 1e9, "mgpud_gflops": flops / m_s / 1e9,
        "requests": len(work), "mgpud_generated_tokens": m_gen, "transformers_generated_tokens": t_gen,
        "mgpud_seconds": m_s, "transformers_seconds": t_s, "threads": threads,
        "mgpud_bf16_tok_s": b_gen / b_s,
    }


if __name__ == "__main__":
    main()
