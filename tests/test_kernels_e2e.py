"""The engine's greedy outputs do not change when the Triton kernels (run by Triton's
interpreter on CPU) replace the torch references."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgpud.engine import EngineConfig, ModelGroup, SamplingParams

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [40, 41]]


def _greedy(model: Path) -> list[list[int]]:
    cfg = EngineConfig(model=str(model), dtype="float32", max_model_len=64, kv_cache_memory=1 << 20,
                       max_num_batched_tokens=16)
    with ModelGroup(cfg) as eng:
        return [ids for ids, _, _ in eng.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))]


def test_interpreted_triton_kernels_give_the_same_tokens(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    reference = _greedy(tiny_llama)
    # The workers inherit the environment: they define the kernels interpreted.
    monkeypatch.setenv("MGPUD_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _greedy(tiny_llama) == reference
