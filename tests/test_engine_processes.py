"""Worker processes never outlive their owner, and a dead rank fails its requests loudly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from mgpud.engine import EngineConfig, EngineDead, RequestStream, SamplingParams
from mgpud.engine.core.llm_engine import LLMEngine
from mgpud.engine.core.prepared import PreparedModel
from waiting import wait_for

OWNER = """
import json, sys
from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
group = ModelGroup(EngineConfig(model=sys.argv[1], tp=2, kv_cache_memory=2 << 20, max_model_len=256))
stream = group.stream([5, 6, 7], params=SamplingParams(max_tokens=200, ignore_eos=True))
next(iter(stream))
print(json.dumps(group.stats().replicas[0].pids), flush=True)
for _ in stream:
    pass
"""
LONG = SamplingParams(max_tokens=200, ignore_eos=True)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(pids: list[int], what: str) -> None:
    wait_for(lambda: not _alive(pids), what, 60, detail=lambda: f"still running: {_alive(pids)}")


def test_kill_9_of_owner_leaves_no_worker(tiny_llama: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tiny_llama)], stdout=subprocess.PIPE, text=True)
    pids = json.loads(owner.stdout.readline())
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    _wait_gone(pids, "the workers to exit after their owner")


def _replica(model: Path) -> LLMEngine:
    """One replica on two CPU devices, driven directly (no group to restart it)."""
    config = EngineConfig(model=str(model), tp=2, kv_cache_memory=2 << 20)
    return LLMEngine(PreparedModel.open(model, 256), config, ["cpu:0", "cpu:1"])


def test_dead_rank_fails_pending_requests(tiny_llama: Path) -> None:
    with _replica(tiny_llama) as eng:
        stream = RequestStream()
        eng.add_request("r1", [5, 6, 7], LONG, stream.put)
        next(iter(stream))
        os.kill(eng.info.pids[1], signal.SIGKILL)
        # The stream ends with an error instead of hanging: consumed beside the test, so
        # that a hang fails it rather than blocks it.
        outputs: list = []
        reader = threading.Thread(target=lambda: outputs.extend(stream), daemon=True)
        reader.start()
        wait_for(lambda: not reader.is_alive(), "the stream to end after a rank died", 60)
        final = outputs[-1]
        assert final.finish_reason == "error"
        assert "exited" in final.error or "failed" in final.error
        assert not eng.alive
        try:
            eng.add_request("r2", [1, 2], LONG, stream.put)
        except EngineDead as exc:
            assert "replica is down" in str(exc)
        else:
            raise AssertionError("a dead engine accepted a request")
        _wait_gone(eng.info.pids, "the surviving rank to exit")


def test_cpu_ranks_run_on_their_own_cores(tiny_llama: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning two CPU devices needs two cores")
    with _replica(tiny_llama) as eng:
        eng.add_request("r1", [5, 6, 7], SamplingParams(max_tokens=2), RequestStream().put)
        # The rank's main thread runs its forward passes; the cores are its device's own.
        pinned = [os.sched_getaffinity(pid) for pid in eng.info.pids]
        assert pinned == [{core} for core in sorted(os.sched_getaffinity(0))[:2]]
