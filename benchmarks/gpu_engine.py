"""The engine on one GPU, eager against CUDA graphs; and a real daemon driven through the CLI.

    python benchmarks/gpu_engine.py [--stage engine|daemon] [--quick] [--json]

`engine`: the demo model (SmolLM2-135M) and a synthetic 1.17 B Llama (written once into the
cache, bf16), each loaded twice on the first device (dtype auto), once with
`enforce_eager` and once with decode graphs. Per batch size (1, 8, 64) that many requests
of 128 random prompt tokens generate 128 tokens each past end-of-sequence, submitted at
once: `tok_s` is output tokens over the wall time, `decode_tok_s` the sum of each
request's rate after its first token, `ttft_p50_ms` the median time to first token.
`graph_speedup` = graphs decode_tok_s / eager decode_tok_s per batch.

`daemon`: `mgpud serve` on the devices of this machine, then `mgpud load demo`,
`generate`, `ps --json` and `devices --json` as a user types them; each command's exit
code and time, and what the replies say of the GPU (graph memory, the memory split).

scripts/gpu-check runs both stages, each under its own timeout. Without a CUDA device it
reports `{"skipped": ...}`, unless `--cpu` runs it on CPU devices (a smoke run of the code:
no graphs there, both passes are eager). `--quick`: the small synthetic model, batches 1
and 4, 8 tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import benchmark, synthetic_checkpoint
from mgpud.daemon.testing import DaemonProcess
from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from mgpud.engine.config import ModelConfig
from mgpud.engine.store.demo import demo_model_dir

PROMPT_TOKENS = 128
FULL = {"batches": (1, 8, 64), "max_tokens": 128}
QUICK = {"batches": (1, 4), "max_tokens": 8}
MAX_MODEL_LEN = 1024
CPU_KV = 64 << 20  # bytes: CPU devices get a fixed KV cache (profiling a CPU is slow)


def _models(quick: bool) -> dict[str, Path]:
    if quick:
        return {"synthetic_small": synthetic_checkpoint("small")}
    return {"demo": demo_model_dir(), "synthetic_1b": synthetic_checkpoint("1b")}


def _config(model: Path, eager: bool, max_num_seqs: int) -> EngineConfig:
    kv = None if torch.cuda.is_available() else CPU_KV
    return EngineConfig(model=str(model), max_model_len=MAX_MODEL_LEN, max_num_seqs=max_num_seqs,
                        kv_cache_memory=kv, enforce_eager=eager)


def run_batch(group: ModelGroup, batch: int, max_tokens: int, vocab: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(100, vocab) for _ in range(PROMPT_TOKENS)] for _ in range(batch)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    finals = [final for _, _, final in group.generate(prompts, params)]
    wall = time.perf_counter() - start
    made = sum(f.completion_tokens for f in finals)
    decode = sum((f.completion_tokens - 1) / (f.finished_time - f.first_token_time)
                 for f in finals if f.completion_tokens > 1 and f.finished_time > f.first_token_time)
    ttft = statistics.median(1000 * (f.first_token_time - f.arrival_time) for f in finals)
    return {"tok_s": round(made / wall, 1), "decode_tok_s": round(decode, 1), "ttft_p50_ms": round(ttft, 2)}


def measure_model(model: Path, eager: bool, sizes: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    with ModelGroup(_config(model, eager, max(sizes["batches"]))) as group:
        load_s = time.perf_counter() - started
        replica = group.stats().replicas[0]
        vocab = min(ModelConfig.from_dir(model).vocab_size, 20000)
        run_batch(group, 1, 4, vocab, seed=99)  # warm-up: first-use costs out of the figures
        result: dict[str, Any] = {"load_s": round(load_s, 2), "dtype": replica.dtype, "devices": replica.devices,
                                  "graph_bytes": replica.graph_bytes_per_rank[0]}
        for batch in sizes["batches"]:
            result[f"batch_{batch}"] = run_batch(group, batch, sizes["max_tokens"], vocab, seed=batch)
    return result


def engine_stage(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    report: dict[str, Any] = {}
    for name, path in _models(quick).items():
        eager, graphs = measure_model(path, True, sizes), measure_model(path, False, sizes)
        speedup = {f"batch_{b}": round(graphs[f"batch_{b}"]["decode_tok_s"] / eager[f"batch_{b}"]["decode_tok_s"], 2)
                   for b in sizes["batches"] if eager[f"batch_{b}"]["decode_tok_s"]}
        report[name] = {"eager": eager, "graphs": graphs, "graph_speedup": speedup}
    return report


class _Cli:
    """`mgpud ...` as a user runs it, against one daemon; keeps each command's outcome."""

    def __init__(self, daemon: DaemonProcess, timeout: float):
        self.daemon, self.timeout = daemon, timeout
        self.steps: list[dict[str, Any]] = []

    def __call__(self, *args: str) -> str:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mgpud.cli", *args, "--runtime-dir", str(self.daemon.runtime_dir)],
                              capture_output=True, text=True, timeout=self.timeout, check=False)
        self.steps.append({"command": " ".join(["mgpud", *args]), "rc": done.returncode,
                           "seconds": round(time.perf_counter() - start, 2),
                           **({"stderr": done.stderr[-2000:]} if done.returncode else {})})
        return done.stdout


def daemon_stage(quick: bool) -> dict[str, Any]:
    devices = "auto" if torch.cuda.is_available() else "cpu:1"
    with DaemonProcess("--log-level", "info", devices=devices) as daemon:
        cli = _Cli(daemon, timeout=240.0)
        cli("load", "demo", "--name", "smol", "--max-model-len", str(MAX_MODEL_LEN),
            *(() if torch.cuda.is_available() else ("--kv-cache-memory", "64MiB")))
        text = cli("generate", "smol", "Name three uses of a GPU.", "--max-tokens", "8" if quick else "32",
                   "--no-stream")
        ps = _json(cli("ps", "--json"))
        devices_reply = _json(cli("devices", "--json"))
        log = daemon.log()
    replicas = [r for m in ps.get("models", []) for r in (m.get("stats") or {}).get("replicas", [])]
    held = [d for d in devices_reply.get("devices", []) if d.get("model")]
    return {"ok": all(s["rc"] == 0 for s in cli.steps) and bool(text.strip()) and bool(replicas) and bool(held),
            "steps": cli.steps, "text": text.strip()[:200],
            "graph_bytes_per_rank": [b for r in replicas for b in r.get("graph_bytes_per_rank", [])],
            "memory": [{"id": d["id"], "name": d["name"], **(d.get("memory") or {})} for d in held],
            **({"daemon_log_tail": log[-3000:]} if not all(s["rc"] == 0 for s in cli.steps) else {})}


def _json(text: str) -> dict[str, Any]:
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}


STAGES = {"engine": engine_stage, "daemon": daemon_stage}


def _add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--stage", choices=tuple(STAGES), default="engine")
    ap.add_argument("--cpu", action="store_true", help="without a GPU, run on CPU devices anyway (a smoke run)")


@benchmark("gpu_engine", __doc__, quick_help="a smoke run (small model, 8 tokens)", save=False, add_args=_add_args)
def main(args: argparse.Namespace) -> dict[str, Any]:
    if not (torch.cuda.is_available() or args.cpu):
        return {"skipped": "no CUDA device"}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"stage": args.stage, "device": device, "quick": args.quick, **STAGES[args.stage](args.quick)}


if __name__ == "__main__":
    main()
