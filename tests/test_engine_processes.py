"""Worker processes never outlive their owner, and a dead rank fails its requests loudly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from mgpud.engine import EngineConfig, EngineDead, LLMEngine, SamplingParams

OWNER = """
import json, sys
from mgpud.engine import EngineConfig, LLMEngine, SamplingParams
eng = LLMEngine(EngineConfig(model=sys.argv[1], tp=2, kv_cache_memory=2 << 20, max_model_len=256))
stream = eng.add_request([5, 6, 7], params=SamplingParams(max_tokens=200, ignore_eos=True))
next(iter(stream))
print(json.dumps(eng.info["pids"]), flush=True)
for _ in stream:
    pass
"""


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    return alive


def test_kill_9_of_owner_leaves_no_worker(tiny_llama: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tiny_llama)], stdout=subprocess.PIPE, text=True)
    pids = json.loads(owner.stdout.readline())
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    assert _wait_gone(pids, 5.0) == []


def test_dead_rank_fails_pending_requests(tiny_llama: Path) -> None:
    with LLMEngine(EngineConfig(model=str(tiny_llama), tp=2, kv_cache_memory=2 << 20, max_model_len=256)) as eng:
        stream = eng.add_request([5, 6, 7], params=SamplingParams(max_tokens=200, ignore_eos=True))
        next(iter(stream))
        started = time.monotonic()
        os.kill(eng.info["pids"][1], signal.SIGKILL)
        final = list(stream)[-1]
        assert time.monotonic() - started < 2.0
        assert final.finish_reason == "error"
        assert "exited" in final.error or "failed" in final.error
        assert not eng.alive
        try:
            eng.add_request([1, 2])
        except EngineDead as exc:
            assert "replica is down" in str(exc)
        else:
            raise AssertionError("a dead engine accepted a request")
        assert _wait_gone(eng.info["pids"], 5.0) == []
