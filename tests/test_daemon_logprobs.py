"""`generate` with logprobs and prompt_logprobs through a real daemon and its client."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import BadRequest
from oracle import hf_logprobs


def test_generate_returns_logprobs_and_prompt_logprobs(tiny_llama: Path) -> None:
    prompt = [5, 17, 42, 99, 7, 300]
    with DaemonProcess(devices="cpu:1") as d, d.client(timeout=30) as c:
        c.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=1, dtype="float32", kv_cache_memory=2 << 20,
               max_model_len=256)
        stream = c.stream("generate", model="tiny", prompt=prompt, max_tokens=4, ignore_eos=True,
                          logprobs=1, prompt_logprobs=2)
        frames = list(stream)
        result = stream.result
        plain = c.call("generate", model="tiny", prompt=prompt, max_tokens=2)
        with pytest.raises(BadRequest, match="logprobs"):
            c.call("generate", model="tiny", prompt=prompt, logprobs=21)
    assert [e for f in frames for e in f["logprobs"]] == result["logprobs"]
    assert [e["token_id"] for e in result["logprobs"]] == result["token_ids"]
    first, *rest = result["prompt_logprobs"]
    assert first is None and [e["token_id"] for e in rest] == prompt[1:]
    ref = hf_logprobs(tiny_llama, prompt)[:-1]
    torch.testing.assert_close(torch.tensor([e["logprob"] for e in rest]), ref[range(len(rest)), prompt[1:]],
                               atol=1e-4, rtol=0)
    assert [[t for t, _ in e["top"]] for e in rest] == ref.topk(2, dim=-1).indices.tolist()
    assert "logprobs" not in plain and "prompt_logprobs" not in plain
