"""The CUDA path (Triton kernels, NCCL): run where a GPU exists, skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from oracle import hf_greedy

pytestmark = pytest.mark.gpu
PROMPTS = [[5, 6, 7, 8], list(range(10, 60)), [300]]


def _greedy_matches(model: Path, tp: int) -> None:
    cfg = EngineConfig(model=str(model), tp=tp, dtype="float32", max_model_len=256,
                       kv_cache_memory=64 << 20, max_num_batched_tokens=32)
    with ModelGroup(cfg) as eng:
        assert all(d.startswith("cuda") for d in eng.devices)
        results = eng.generate(PROMPTS, SamplingParams(max_tokens=24))
    for prompt, (ids, _, _) in zip(PROMPTS, results):
        assert ids == hf_greedy(model, prompt, 24)


def test_cuda_tp1_greedy_matches_transformers(tiny_llama: Path) -> None:
    _greedy_matches(tiny_llama, 1)


def test_nccl_tp2_greedy_matches_transformers(tiny_llama: Path) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    _greedy_matches(tiny_llama, 2)


def test_bfloat16_default_on_cuda_serves(tiny_llama: Path) -> None:
    with ModelGroup(EngineConfig(model=str(tiny_llama), max_model_len=128, kv_cache_memory=16 << 20)) as eng:
        assert eng.stats().replicas[0].dtype == "bfloat16"
        ids, _, final = eng.stream([5, 6, 7], params=SamplingParams(max_tokens=8, ignore_eos=True)).result()
        assert len(ids) == 8 and final.finish_reason == "length"
