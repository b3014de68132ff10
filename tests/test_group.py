"""Model groups: data-parallel replicas, load-aware routing, live reshaping and
failure isolation, on CPU devices with a tiny model."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import pytest

from mgpud.engine import EngineConfig, ModelLoadError, SamplingParams
from mgpud.engine.serving.group import ModelGroup
from mgpud.engine.serving.pool import DevicePool
from oracle import hf_greedy
from waiting import wait_for

NEW = 12
PARAMS = SamplingParams(max_tokens=NEW)


def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 500) for _ in range(rng.randrange(4, 30))] for _ in range(n)]


def _config(model: Path, tp: int = 1) -> EngineConfig:
    return EngineConfig(model=str(model), tp=tp, dtype="float32", max_model_len=128, kv_cache_memory=1 << 20)


@pytest.fixture(scope="module")
def expected(tiny_llama: Path) -> dict[tuple[int, ...], list[int]]:
    prompts = _prompts(16, seed=5)
    return {tuple(p): hf_greedy(tiny_llama, p, NEW) for p in prompts}


@pytest.mark.parametrize("tp, dp", [(1, 2), (2, 1), (2, 2)])
def test_shapes_give_single_replica_outputs(tiny_llama: Path, expected, tp: int, dp: int) -> None:
    with ModelGroup(_config(tiny_llama, tp), dp, DevicePool([f"cpu:{i}" for i in range(4)])) as group:
        assert group.stats().dp == dp
        devices = [r.devices for r in group.stats().replicas]
        assert len({d for ds in devices for d in ds}) == tp * dp  # disjoint
        prompts = [list(p) for p in expected]
        for prompt, (ids, _, _) in zip(prompts, group.generate(prompts, PARAMS)):
            assert ids == expected[tuple(prompt)]


def test_burst_spreads_over_replicas(tiny_llama: Path) -> None:
    with ModelGroup(_config(tiny_llama), 2, DevicePool(["cpu:0", "cpu:1"])) as group:
        group.generate(_prompts(40, seed=9), SamplingParams(max_tokens=4))
        served = [r.requests_finished for r in group.stats().replicas]
        assert sum(served) == 40 and all(16 <= n <= 24 for n in served), served


def test_refuses_impossible_shapes_before_stopping_anything(tiny_llama: Path) -> None:
    with ModelGroup(_config(tiny_llama), 1, DevicePool(["cpu:0", "cpu:1"])) as group:
        pids = group.stats().replicas[0].pids
        with pytest.raises(ModelLoadError, match="tp=3 does not divide.*shapes that would work: tp=1 dp=1"):
            group.reconfigure(3, 1)
        with pytest.raises(ModelLoadError, match="needs 4 devices but 2"):
            group.reconfigure(2, 2)
        assert group.stats().replicas[0].pids == pids and group.stats().state == "ready"


class _Traffic:
    """Keeps requests flowing from a thread and checks every answer."""

    def __init__(self, group: ModelGroup, expected: dict[tuple[int, ...], list[int]]):
        self.group, self.expected = group, expected
        self.done, self.bad = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        prompts = [list(p) for p in self.expected]
        while not self._stop.is_set():
            batch = random.sample(prompts, 3)
            for prompt, stream in [(p, self.group.stream(p, params=PARAMS)) for p in batch]:
                ids, _, final = stream.result()
                if ids != self.expected[tuple(prompt)]:
                    self.bad.append((final.finish_reason, final.error))
                self.done += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "a request hung"


@pytest.mark.slow
def test_reconfigure_under_traffic_loses_nothing(tiny_llama: Path, expected) -> None:
    with ModelGroup(_config(tiny_llama), 1, DevicePool(["cpu:0", "cpu:1"])) as group:
        traffic = _Traffic(group, expected)
        reports = []
        for tp, dp in [(1, 2), (1, 1), (2, 1), (1, 1)]:
            target = traffic.done + 6
            reports.append(group.reconfigure(tp, dp))
            assert (group.tp, group.dp) == (tp, dp)
            wait_for(lambda target=target: traffic.done >= target, f"requests served after tp={tp} dp={dp}", 60,
                     detail=lambda: f"{traffic.done} served, wrong answers: {traffic.bad}")
        traffic.stop()
        assert traffic.bad == []
        assert reports[0]["held_s"] == 0.0  # a free device: the new replica started alongside
        assert reports[2]["held_s"] > 0.0  # tp 1 -> 2 on two devices: requests waited


@pytest.mark.slow
def test_killed_worker_fails_over_and_replica_returns(tiny_llama: Path, expected) -> None:
    events = []
    with ModelGroup(_config(tiny_llama), 2, DevicePool(["cpu:0", "cpu:1"]), on_event=events.append) as group:
        traffic = _Traffic(group, expected)
        wait_for(lambda: traffic.done >= 3, "the first requests", 60)
        victim = group.stats().replicas[0]
        killed_at = len(events)
        os.kill(victim.pids[0], signal.SIGKILL)
        wait_for(lambda: any(e["kind"] == "replica_failed" for e in events[killed_at:]), "the failure event", 30,
                 detail=lambda: events[killed_at:])
        wait_for(lambda: any(e["kind"] == "replica_ready" and e["replica"] == victim.index
                             for e in events[killed_at:]), "the replica to come back", 60,
                 detail=lambda: events[killed_at:])
        traffic.stop()
        assert all(reason == "replica_failed" for reason, _ in traffic.bad), traffic.bad
        served = {r.index: r.state for r in group.stats().replicas}
        assert served[victim.index] == "ready"
        ids, _, _ = group.stream(list(next(iter(expected))), params=PARAMS).result()
        assert ids == next(iter(expected.values()))
