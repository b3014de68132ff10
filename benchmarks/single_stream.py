"""One request at a time on the demo model: a real `mgpud` daemon on one CPU device holding
every core (`--devices cpu:1`, default dtype), against transformers' batch-1 `generate` on
one thread, the setup of someone chatting with a model on a laptop-class CPU.

    python benchmarks/single_stream.py [--json] [--quick]

Both generate the same number of tokens greedily past any end-of-sequence token, a few
times each (the best run counts: single streams are short and the machine is shared).
`tok_s` is generated tokens over the request's wall time, `decode_tok_s` the rate after
the first token (mgpud: the daemon's own timings; transformers: a 1-token run subtracted).
`ratio` = mgpud tok_s / transformers tok_s. Target: >= 2.5. Decoding one token reads every
weight once, so the figure follows memory bandwidth and the bytes per weight (dtype).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import bench_model, benchmark
from mgpud.daemon.testing import DaemonProcess
from mgpud.engine import EngineConfig

MESSAGES = [{"role": "user", "content": "Tell me a story about a lighthouse keeper and a storm."}]
DEVICES = "cpu:1"
TARGET = 2.5


def run_mgpud(model: str, tokens: int, repeats: int) -> dict[str, float]:
    best: dict[str, float] = {}
    with DaemonProcess("--log-level", "warning", devices=DEVICES) as daemon:
        daemon.call("load", model=model, name="smol", tp=1, dp=1, max_model_len=1024, kv_cache_memory=64 << 20)
        with daemon.client(timeout=300.0) as client:
            ask = {"model": "smol", "messages": MESSAGES, "ignore_eos": True}
            client.stream("generate", **ask, max_tokens=4).wait()  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                result = client.stream("generate", **ask, max_tokens=tokens).wait()
                seconds = time.perf_counter() - start
                made = result["usage"]["completion_tokens"]
                if made / seconds > best.get("tok_s", 0.0):
                    best = {"tok_s": made / seconds, "decode_tok_s": result["timings"]["decode_tokens_per_s"],
                            "ttft_ms": result["timings"]["ttft_ms"], "tokens": made}
    return best


def run_transformers(model: str, tokens: int, repeats: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def timed(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            hf.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                        pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return time.perf_counter() - start

    timed(4)  # warm-up
    first = min(timed(1) for _ in range(repeats))
    whole = min(timed(tokens) for _ in range(repeats))
    return {"tok_s": tokens / whole, "decode_tok_s": (tokens - 1) / (whole - first), "ttft_ms": 1000 * first,
            "tokens": tokens}


@benchmark("single_stream", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    tokens, repeats = (16, 1) if args.quick else (128, 3)
    model = str(bench_model(args.quick))
    ours = run_mgpud(model, tokens, repeats)
    theirs = run_transformers(model, tokens, repeats)
    return {"ratio": ours["tok_s"] / theirs["tok_s"], "decode_ratio": ours["decode_tok_s"] / theirs["decode_tok_s"],
            "target_ratio": TARGET, "mgpud": ours, "transformers": theirs, "devices": DEVICES,
            "mgpud_dtype": EngineConfig(model=model).dtype_name(on_cuda=False), "transformers_dtype": "float32",
            "transformers_threads": 1}


if __name__ == "__main__":
    main()
