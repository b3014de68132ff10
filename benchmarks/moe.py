"""A small mixture-of-experts model on two CPU devices, three ways: experts TP-sharded at
tp=2, expert parallel at tp=2, and tp=1 x dp=2; output tokens/s and the expert load
balance (mean/max tokens per EP rank, or per expert when sharded; 1 = even).

    python benchmarks/moe.py [--json] [--quick]

The model is a random Qwen3-MoE built in place (8 experts, top-2, hidden 512, 8 layers;
--quick: 2 layers) with the demo model's tokenizer, float32, one thread per device. Every
shape runs the same greedy requests of random token ids past any end token.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import benchmark
from mgpud.engine import EngineConfig, SamplingParams
from mgpud.engine.serving.group import ModelGroup
from mgpud.engine.serving.pool import DevicePool
from mgpud.engine.store.demo import demo_model_dir

SHAPES = [("tp2_sharded", 2, 1, False), ("tp2_ep", 2, 1, True), ("tp1_dp2", 1, 2, False)]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_model(folder: Path, layers: int) -> int:
    """Write the random MoE checkpoint into `folder`; returns its vocabulary size."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    demo = demo_model_dir()
    for name in _TOKENIZER_FILES:
        if (demo / name).is_file():
            shutil.copy(demo / name, folder / name)
    vocab = json.loads((demo / "config.json").read_text())["vocab_size"]
    config = Qwen3MoeConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1024, moe_intermediate_size=512,
                            num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=2048,
                            bos_token_id=1, eos_token_id=2, dtype="float32")
    torch.manual_seed(0)
    Qwen3MoeForCausalLM(config).save_pretrained(folder)
    return vocab


def run(model: str, tp: int, dp: int, ep: bool, prompts: list[list[int]], tokens: int) -> dict[str, float]:
    cfg = EngineConfig(model=model, tp=tp, dtype="float32", max_model_len=1024, kv_cache_memory=64 << 20,
                       enable_expert_parallel=ep)
    with ModelGroup(cfg, dp, DevicePool(["cpu:0", "cpu:1"])) as group:
        group.generate([[5, 6, 7]], SamplingParams(max_tokens=2))  # warm-up
        start = time.perf_counter()
        params = SamplingParams(max_tokens=tokens, ignore_eos=True)
        made = sum(len(ids) for ids, _, _ in group.generate(prompts, params))
        elapsed = time.perf_counter() - start
        figures = group.stats()
    return {"tokens_per_s": made / elapsed, "seconds": elapsed, "generated_tokens": made,
            "expert_balance": figures.expert_balance}


@benchmark("moe", __doc__)
def main(args: argparse.Namespace) -> dict[str, Any]:
    layers, requests, tokens = (2, 4, 8) if args.quick else (8, 32, 64)
    with tempfile.TemporaryDirectory(prefix="mgpud-moe-") as tmp:
        vocab = build_model(Path(tmp), layers)
        rng = random.Random(0)
        prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(16, 128))] for _ in range(requests)]
        return {name: run(tmp, tp, dp, ep, prompts, tokens) for name, tp, dp, ep in SHAPES}


if __name__ == "__main__":
    main()
