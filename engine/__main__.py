"""Offline generation without a daemon: `python -m mgpud.engine [--tp N] [PROMPT ...]`.

Loads a model (the demo model by default) over this machine's devices and streams a
chat reply for each prompt.
"""

from __future__ import annotations

import argparse
import sys

from . import EngineConfig, ModelGroup, SamplingParams
from .store.demo import DEMO_NAME


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m mgpud.engine", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompts", nargs="*", default=["What is the capital of France?", "Write a haiku about GPUs."])
    ap.add_argument("--model", default=DEMO_NAME, help="model directory, or 'demo' (default)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (1 or 3 for the demo model)")
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()

    def progress(p) -> None:
        if p.bytes_total:
            print(f"\rloading {p.bytes_done / 2**20:.0f}/{p.bytes_total / 2**20:.0f} MiB", end="", file=sys.stderr)
        elif p.message:
            print(f"\n{p.phase}: {p.message}", file=sys.stderr)

    cfg = EngineConfig(model=args.model, tp=args.tp, max_model_len=2048, kv_cache_memory=256 << 20)
    with ModelGroup(cfg, progress=progress) as group:
        for prompt in args.prompts:
            print(f"\n>>> {prompt}")
            messages = [{"role": "user", "content": prompt}]
            for out in group.stream(messages=messages, params=SamplingParams(max_tokens=args.max_tokens)):
                print(out.new_text, end="", flush=True)
            print()


if __name__ == "__main__":
    main()
