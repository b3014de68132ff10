"""The embedded demo model (SmolLM2-135M-Instruct) against transformers, at TP 1 and 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from oracle import hf_chat_ids, hf_greedy

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}],
]
NEW_TOKENS = 24


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 3])
def test_demo_chat_greedy_matches_transformers(demo_model: Path, tp: int) -> None:
    cfg = EngineConfig(model=str(demo_model), tp=tp, dtype="float32", max_model_len=512, kv_cache_memory=64 << 20)
    with ModelGroup(cfg) as eng:
        assert eng.model.config.valid_tp_degrees(9) == [1, 3]
        streams = [eng.stream(messages=m, params=SamplingParams(max_tokens=NEW_TOKENS)) for m in CHATS]
        results = [s.result() for s in streams]
    for messages, (ids, text, final) in zip(CHATS, results):
        prompt = hf_chat_ids(demo_model, messages)
        assert final.prompt_tokens == len(prompt)
        assert ids == hf_greedy(demo_model, prompt, NEW_TOKENS), text
    assert "Paris" in results[0][1]
