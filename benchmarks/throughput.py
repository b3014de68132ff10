"""Offline throughput on the demo model: mgpud (TP=1) against transformers' batched
generate, on the same chat prompts, in one run, plus mgpud's share of the matmul peak.

    python benchmarks/throughput.py [--json] [--quick]

mgpud runs in its default dtype (auto: bf16 where the CPU has bf16 matrix instructions,
else fp32); `ratio` compares it with the faster of transformers in fp32 and in bf16, and
`roofline_fraction` divides its FLOP/s by the GEMM peak of the dtype it ran in. Where the
CPU lacks bf16 instructions, bf16 GEMMs are emulated (measured 50-100x slower here), so
the bf16 runs are skipped and only the two GEMM peaks say why.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import bench_model, bench_threads, benchmark, chat_workload, matmul_peak_flops
from mgpud.engine import EngineConfig, ModelConfig, ModelGroup, SamplingParams
from mgpud.engine.hosts.cpu_features import native_bf16

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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


def run_transformers(model: str, work, threads: int, batch: int, dtype: str) -> tuple[float, int]:
    """(seconds, useful generated tokens): batches of `batch` in arrival order, left-padded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=TORCH_DTYPES[dtype]).eval()
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


def gemm_peaks(threads: int) -> dict[str, float]:
    """GEMM FLOP/s per dtype; an emulated bf16 GEMM gets a small matrix (1024 takes seconds)."""
    size = 1024 if native_bf16() else 256
    return {"float32": matmul_peak_flops(threads),
            "bfloat16": matmul_peak_flops(threads, size=size, seconds=0.5, dtype=torch.bfloat16)}


def decoder_flops(model: str, processed: int, generated: int) -> float:
    """Every processed token runs the decoder layers; only sampled ones run the LM head."""
    cfg = ModelConfig.from_dir(model)
    embed = cfg.vocab_size * cfg.hidden_size
    return 2 * (cfg.param_count() - embed) * processed + 2 * embed * generated


@benchmark("throughput", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    threads = bench_threads(args.quick)
    model = str(bench_model(args.quick))
    work = chat_workload(4, 4, 8) if args.quick else chat_workload(64, 16, 256)
    peaks = gemm_peaks(threads)
    auto = EngineConfig(model=model).dtype_name(on_cuda=False)
    dtypes = ["float32", "bfloat16"] if native_bf16() else ["float32"]
    ours = {dt: run_mgpud(model, work, threads, dt) for dt in dtypes}
    theirs = {dt: run_transformers(model, work, threads, 32, dt) for dt in dtypes}
    tok_s = {dt: gen / sec for dt, (sec, gen, _) in ours.items()}
    hf_tok_s = {dt: gen / sec for dt, (sec, gen) in theirs.items()}
    m_s, m_gen, m_prompt = ours[auto]
    flops = decoder_flops(model, m_prompt + m_gen, m_gen)
    best = max(hf_tok_s, key=hf_tok_s.get)
    return {
        "mgpud_tok_s": tok_s[auto], "transformers_tok_s": hf_tok_s[best],
        "ratio": tok_s[auto] / hf_tok_s[best], "roofline_fraction": flops / m_s / peaks[auto],
        "mgpud_dtype": auto, "transformers_dtype": best,
        "matmul_peak_gflops": peaks[auto] / 1e9, "mgpud_gflops": flops / m_s / 1e9,
        "gemm_peak_gflops": {dt: p / 1e9 for dt, p in peaks.items()},
        "mgpud_tok_s_by_dtype": tok_s, "transformers_tok_s_by_dtype": hf_tok_s,
        "bf16_skipped": None if native_bf16() else "no avx512_bf16/amx_bf16: bf16 GEMMs are emulated here",
        "requests": len(work), "mgpud_generated_tokens": m_gen,
        "transformers_generated_tokens": theirs[best][1],
        "mgpud_seconds": m_s, "transformers_seconds": theirs[best][0], "threads": threads,
        "mgpud_bf16_tok_s": tok_s.get("bfloat16"),
    }


if __name__ == "__main__":
    main()
