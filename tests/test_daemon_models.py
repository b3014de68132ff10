"""A real daemon serving a tiny random model on two CPU devices (tp=2), through the client."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mgpud.daemon.testing import DaemonProcess
from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from mgpud.ipc import AsyncClient, Client, RemoteError, framing
from test_daemon_protocol import dealer, flood
from waiting import wait_for

LIMITS = {"kv_cache_memory": 2 << 20, "max_model_len": 256}
PROMPTS = ["The daemon serves", [5, 6, 7, 8, 9], "What is the capital of France?"]
MAX_TOKENS = 12


def offline(model: Path, tp: int) -> list[list[int]]:
    """The engine's own greedy output for PROMPTS, without the daemon."""
    with ModelGroup(EngineConfig(model=str(model), tp=tp, **LIMITS)) as eng:
        results = eng.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    return [ids for ids, _, _ in results]


@pytest.fixture(scope="module")
def reference(tiny_llama: Path) -> list[list[int]]:
    return offline(tiny_llama, tp=2)


@pytest.fixture(scope="module")
def daemon(tiny_llama: Path, reference: list[list[int]]) -> Iterator[DaemonProcess]:
    # On warm workers, as a daemon runs by default: its outputs are compared with the engine's.
    with DaemonProcess("--warm-workers", "2") as d:
        with d.client(timeout=30) as c:
            c.call("load", model=str(tiny_llama), name="tiny", tp=2, **LIMITS)
        yield d


def generate(c: Client, prompt: str | list[int], **args: object) -> tuple[list[dict], dict]:
    stream = c.stream("generate", model="tiny", prompt=prompt, max_tokens=MAX_TOKENS, ignore_eos=True, **args)
    frames = list(stream)
    return frames, stream.result


def test_load_reports_progress_and_shape(tiny_llama: Path) -> None:
    with DaemonProcess() as d, d.client(timeout=30) as c:
        stream = c.stream("load", model=str(tiny_llama), tp=1, dp=1, **LIMITS)
        frames = list(stream)
        progress = [f for f in frames if "phase" in f]
        assert progress[-1]["phase"] == "ready"
        assert any(f["phase"] == "load" and f["bytes_total"] > 0 for f in progress)
        assert [f["kind"] for f in frames if "kind" in f] == ["replica_starting", "replica_ready"]
        model = stream.result
        assert (model["name"], model["state"], model["tp"], model["devices"]) == ("llama", "ready", 1, ["cpu:0"])
        with pytest.raises(RemoteError) as info:
            c.call("load", model=str(tiny_llama), tp=1, dp=1, **LIMITS)
        assert info.value.code == "already_exists"
        auto = c.call("load", model=str(tiny_llama), name="auto", wait=False, **LIMITS)
        assert auto["state"] == "loading" and auto["reasons"]  # tp=dp=0: the planner chose
        auto = wait_for(lambda: (m := c.call("models")["models"][1])["state"] != "loading" and m,
                        "the planner's load to end", 60)
        assert (auto["state"], auto["tp"], auto["dp"], auto["devices"]) == ("ready", 1, 1, ["cpu:1"])
        [dev0, dev1] = c.call("devices")["devices"]
        assert (dev0["model"], dev0["rank"], dev1["model"]) == ("llama", 0, "auto")
        assert dev0["memory"]["weights"] > 0 and dev0["memory"]["kv_allocated"] == LIMITS["kv_cache_memory"]
        pids = [p for m in c.call("models")["models"] for r in m["stats"]["replicas"] for p in r["pids"]]
        assert c.call("unload", name="llama") == {"name": "llama", "unloaded": True}
        assert [m["name"] for m in c.call("models")["models"]] == ["auto"]
        assert c.call("shutdown")["stopping"]
        assert d.wait() == 0
    assert not [p for p in pids if psutil.pid_exists(p)]


@pytest.mark.slow
def test_replicas_then_reshard_match_the_engine_offline(tiny_llama: Path, reference: list[list[int]]) -> None:
    single = offline(tiny_llama, tp=1)
    with DaemonProcess() as d, d.client(timeout=60) as c:
        model = c.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=2, **LIMITS)
        assert (model["tp"], model["dp"], model["devices"]) == (1, 2, ["cpu:0", "cpu:1"])
        assert [generate(c, p)[1]["token_ids"] for p in PROMPTS] == single
        served = [r["requests_finished"] for r in c.call("models")["models"][0]["stats"]["replicas"]]
        assert sum(served) == len(PROMPTS)
        stream = c.stream("reconfigure", name="tiny", tp=2, dp=1)
        kinds = [f["kind"] for f in stream if "kind" in f]
        assert stream.result["from"] == {"tp": 1, "dp": 2} and stream.result["to"] == {"tp": 2, "dp": 1}
        assert "replica_draining" in kinds and "replica_ready" in kinds
        assert (stream.result["model"]["tp"], stream.result["model"]["dp"]) == (2, 1)
        assert [generate(c, p)[1]["token_ids"] for p in PROMPTS] == reference
        with pytest.raises(RemoteError) as info:
            c.call("reconfigure", name="tiny", tp=3)
        assert info.value.code == "load_failed" and "shapes that would work" in str(info.value)
        saved = json.loads((d.state_dir / "state.json").read_text())["models"]
        assert [(m["tp"], m["dp"]) for m in saved] == [(2, 1)]
        assert c.call("unload", name="tiny")["unloaded"]
        assert d.stop() == 0


def test_streams_match_the_engine_offline(daemon: DaemonProcess, reference: list[list[int]]) -> None:
    with daemon.client() as c:
        for prompt, expected in zip(PROMPTS, reference):
            frames, result = generate(c, prompt)
            assert [t for f in frames for t in f["token_ids"]] == result["token_ids"] == expected
            assert "".join(f["text"] for f in frames) == result["text"]
            assert result["finish_reason"] == "length"
            assert result["usage"]["completion_tokens"] == MAX_TOKENS
            assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + MAX_TOKENS
            timings = result["timings"]
            assert 0 <= timings["queue_ms"] <= timings["ttft_ms"] <= timings["total_ms"]
        frames, result = generate(c, PROMPTS[0], stream=False)
        assert frames == [] and result["token_ids"] == reference[0]
        chat = c.call("generate", model="tiny", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4)
        assert chat["usage"]["completion_tokens"] <= 4
        stats = c.call("models")["models"][0]["stats"]
        assert stats["requests_finished"] >= 5 and stats["ttft_p95_ms"] > 0


def test_async_client_streams(daemon: DaemonProcess, reference: list[list[int]]) -> None:
    async def main() -> list[dict]:
        async with AsyncClient(daemon.runtime_dir) as c:
            streams = [c.stream("generate", model="tiny", prompt=p, max_tokens=MAX_TOKENS, ignore_eos=True)
                       for p in PROMPTS]
            return await asyncio.gather(*(s.wait() for s in streams))

    assert [r["token_ids"] for r in asyncio.run(main())] == reference


def test_cancel_ends_the_stream(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        stream = c.stream("generate", model="tiny", prompt=[5, 6], max_tokens=200, ignore_eos=True)
        frames = iter(stream)
        next(frames)
        reply = stream.cancel()
        assert reply["cancelled"] and reply["requests"][0].startswith("gen-")
        for _ in frames:
            pass
        assert stream.result["finish_reason"] == "cancelled"
        assert stream.result["usage"]["completion_tokens"] < 200


def test_engine_refusals_are_invalid_request(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        with pytest.raises(RemoteError) as info:
            c.call("generate", model="tiny", prompt=[5] * 300)
        assert info.value.code == "invalid_request" and "max_model_len" in str(info.value)
        with pytest.raises(RemoteError) as info:
            c.call("generate", model="tiny", prompt=[5, 6], max_tokens=99999)
        assert info.value.code == "invalid_request"
        assert "max_tokens is 99999 but the 2-token prompt leaves 254 of max_model_len 256" in str(info.value)


def test_max_tokens_as_the_context_allows(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        full = c.call("generate", model="tiny", prompt=[5] * 250, max_tokens=6, ignore_eos=True)
        assert (full["usage"]["completion_tokens"], full["finish_reason"]) == (6, "length")
        omitted = c.call("generate", model="tiny", prompt=[5] * 250, ignore_eos=True)  # 256 by default: fewer fit
        assert (omitted["usage"]["completion_tokens"], omitted["finish_reason"]) == (6, "length")


def test_a_running_id_cannot_be_reused(daemon: DaemonProcess) -> None:
    sock = dealer(daemon)
    try:
        args = {"model": "tiny", "prompt": [5, 6], "max_tokens": 100, "ignore_eos": True}
        sock.send(framing.request("same", "generate", args))
        sock.send(framing.request("same", "generate", args))
        refused = None
        while True:
            assert sock.poll(30_000)
            msg = framing.parse_reply(sock.recv())
            if msg["type"] == "error":
                refused = msg["error"]
            elif msg["type"] == "result":
                break
        assert refused and refused["code"] == "bad_request" and "in use" in refused["message"]
    finally:
        sock.close()


def test_malformed_flood_leaves_generations_correct(daemon: DaemonProcess, reference: list[list[int]]) -> None:
    assert flood(daemon, 1000, seed=1) == 1000
    with daemon.client() as c:
        assert [generate(c, p)[1]["token_ids"] for p in PROMPTS] == reference


def test_status_answers_while_generating(daemon: DaemonProcess) -> None:
    """The control loop stays responsive at full load: `status` is answered while the
    generations run, not after them. How fast is benchmarks/control_latency.py's figure
    (loaded p99), not a pass/fail threshold on a shared 2-core machine."""
    with daemon.client() as busy, daemon.client() as probe:
        streams = [busy.stream("generate", model="tiny", prompt=[5 + i], max_tokens=200, ignore_eos=True)
                   for i in range(4)]
        wait_for(lambda: probe.call("status")["generations_running"] == 4, "a status answered mid-generation", 60)
        assert [s.wait()["usage"]["completion_tokens"] for s in streams] == [200] * 4


@pytest.mark.slow
def test_sigterm_mid_stream_then_restart_restores(tiny_llama: Path, tmp_path: Path,
                                                  reference: list[list[int]]) -> None:
    state = tmp_path / "state"
    with DaemonProcess(state_dir=state) as d:
        with d.client(timeout=30) as c:
            c.call("load", model=str(tiny_llama), name="tiny", tp=2, **LIMITS)
            pids = c.call("models")["models"][0]["stats"]["replicas"][0]["pids"]
            stream = c.stream("generate", model="tiny", prompt=[5, 6], max_tokens=150, ignore_eos=True)
            frames = iter(stream)
            next(frames)
            d.signal(signal.SIGTERM)
            with d.client() as late:
                def refused() -> bool:  # the daemon answers while it drains, and refuses new work
                    try:
                        late.call("generate", model="tiny", prompt="hi", max_tokens=2)
                    except RemoteError as exc:
                        return exc.code == "shutting_down"
                    return False

                wait_for(refused, "new work refused while draining", 30)
            for _ in frames:
                pass
            assert stream.result["finish_reason"] == "length"
            assert stream.result["usage"]["completion_tokens"] == 150
        assert d.wait() == 0
    assert not [p for p in pids if psutil.pid_exists(p)]
    saved = json.loads((state / "state.json").read_text())["models"]
    assert [(m["name"], m["tp"], m["dp"]) for m in saved] == [("tiny", 2, 1)]

    with DaemonProcess(state_dir=state) as again, again.client(timeout=30) as c:
        again.wait_running()
        [model] = c.call("models")["models"]
        assert (model["state"], model["tp"]) == ("ready", 2)
        assert [generate(c, p)[1]["token_ids"] for p in PROMPTS] == reference
        assert again.stop() == 0


def test_random_prompts_never_break_the_stream(daemon: DaemonProcess) -> None:
    rng = random.Random(3)
    with daemon.client() as c:
        for _ in range(5):
            text = "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
            _, result = generate(c, text, temperature=0.8, seed=rng.randrange(1000), top_p=0.9, top_k=20)
            assert result["finish_reason"] == "length" and len(result["token_ids"]) == MAX_TOKENS


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_still_exits_0(tiny_llama: Path) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the workers die
    at the same moment the daemon starts its graceful stop."""
    d = DaemonProcess()
    try:
        d.proc = subprocess.Popen([sys.executable, "-m", "mgpud.daemon", *d.args], env=d.env,
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d.wait_answering(60)
        with d.client(timeout=30) as c:
            c.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=1, **LIMITS)
        os.killpg(d.proc.pid, signal.SIGINT)
        assert d.wait(90) == 0
    finally:
        d.close()
