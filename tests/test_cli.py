"""The command line against a real daemon (`mgpud serve` in a subprocess, CPU devices).

One daemon serves the whole module; tests run in file order and share its models: the
first ones need both devices free, `served` then keeps "tiny" on cpu:0, and the last
one shuts the daemon down.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from checkpoints import make_tiny_checkpoint
from mgpud.cli.main import cli
from mgpud.ipc import Client, DaemonUnavailable
from waiting import wait_for

KV = "8MiB"  # per rank: plenty for these tiny models, and no GiB-sized allocations
LONG = 8192  # positions of the test model: room for a generation that outlasts a Ctrl-C


class Daemon:
    def __init__(self, root: Path, *flags: str) -> None:
        self.runtime_dir = root / "run"
        self.log = root / "daemon.log"
        cmd = [sys.executable, "-m", "mgpud.cli", "serve", "--runtime-dir", str(self.runtime_dir),
               "--state-dir", str(root / "state"), "--devices", "cpu:2", "--device-memory", "1GiB",
               "--log-level", "debug", "--http", "off", *flags]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def wait_answering(self, timeout: float = 60.0) -> None:
        def pong() -> dict[str, Any]:
            assert self.proc.poll() is None, f"mgpud serve exited:\n{self.log.read_text()}"
            return self.call("ping", timeout=0.5)

        wait_for(pong, "mgpud serve to answer", timeout, ignore=(DaemonUnavailable,), detail=self.log.read_text)

    def call(self, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        with Client(self.runtime_dir, timeout=timeout) as client:
            return client.call(op, **args)

    def model(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.call("models")["models"] if m["name"] == name), None)

    def cli(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--runtime-dir", str(self.runtime_dir), *args], input=input)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """`mgpud ARGS` as a real process, for what needs signals."""
        return subprocess.Popen([sys.executable, "-m", "mgpud.cli", "--runtime-dir", str(self.runtime_dir), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def serving(root: Path, *flags: str) -> Iterator[Daemon]:
    """A daemon in `root` (with `flags` for `serve`), answering; killed at the end if still up."""
    d = Daemon(root, *flags)
    try:
        d.wait_answering()
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="mgpud-cli-"))  # short: a socket path holds 107 bytes
    try:
        with serving(root) as d:
            yield d
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "llama", max_positions=LONG)


@pytest.fixture(scope="module")
def served(daemon: Daemon, model_dir: Path) -> dict[str, Any]:
    """`mgpud load --json` of "tiny" on cpu:0: its output, parsed."""
    result = daemon.cli("load", str(model_dir), "--name", "tiny", "--tp", "1", "--devices", "cpu:0",
                        "--kv-cache-memory", KV, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def extra(daemon: Daemon) -> Iterator[list[str]]:
    """Names of the models a test loads beside "tiny": gone after it, pass or fail, so that
    one failure does not hold a device from the tests after it."""
    names: list[str] = []
    yield names
    for name in names:
        wait_for(lambda n=name: (daemon.model(n) or {}).get("state") != "loading", f"{name} to load", 120)
        if daemon.model(name):
            daemon.call("unload", name=name, force=True)


def load_args(model_dir: Path, name: str, *flags: str) -> list[str]:
    return ["load", str(model_dir), "--name", name, "--kv-cache-memory", KV, *flags]


# -- with both devices free ---------------------------------------------------------------

def test_ctrl_c_during_load_detaches_and_the_load_goes_on(daemon: Daemon, model_dir: Path,
                                                          extra: list[str]) -> None:
    extra.append("detached")
    proc = daemon.spawn(*load_args(model_dir, "detached", "--tp", "2"))
    wait_for(lambda: daemon.model("detached"), "the load to begin", 30)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "detached: the daemon keeps loading detached" in err
    wait_for(lambda: (daemon.model("detached") or {}).get("state") == "ready", "the load to finish", 120)
    result = daemon.cli("unload", "detached", "--force", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"name": "detached", "unloaded": True}


def test_status_devices_and_version(daemon: Daemon) -> None:
    status = daemon.cli("status")
    assert status.exit_code == 0, status.output
    assert re.match(r"mgpud 0\.1\.0 \(protocol 1\), pid \d+, running for", status.stdout)
    assert f"control   {daemon.runtime_dir}/control.sock" in status.stdout
    assert "devices   2 cpu, 2 free" in status.stdout
    data = json.loads(daemon.cli("status", "--json").stdout)
    assert data["control_socket"] == f"{daemon.runtime_dir}/control.sock"
    assert data["devices"] == {"total": 2, "free": 2, "kinds": ["cpu"]}

    devices = daemon.cli("devices")
    assert devices.exit_code == 0, devices.output
    header, *rows = devices.stdout.splitlines()[:3]
    assert header.split()[:3] == ["DEVICE", "NAME", "MEMORY"]
    assert rows[0].startswith("cpu:0") and rows[1].startswith("cpu:1")
    assert "/ 1.0 GiB" in rows[0]
    data = json.loads(daemon.cli("gpus", "--json").stdout)
    assert [d["id"] for d in data["devices"]] == ["cpu:0", "cpu:1"]
    assert set(data["devices"][0]["memory"]) == {"weights", "kv_allocated", "kv_used", "activations", "other", "free",
                                                   "graphs", "kv_touched"}

    version = json.loads(daemon.cli("--json", "version").stdout)
    assert version["cli"] == version["daemon"]["version"] == "0.1.0"
    assert "daemon: mgpud 0.1.0, protocol 1" in daemon.cli("version").stdout


def test_a_second_serve_on_the_same_runtime_dir_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mgpud.cli", "serve", "--runtime-dir", str(daemon.runtime_dir),
                           "--state-dir", str(tmp_path), "--devices", "cpu:1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "another mgpud holds" in done.stderr


def test_ps_with_no_model(daemon: Daemon) -> None:
    result = daemon.cli("ps")
    assert result.exit_code == 0
    assert result.stdout == "no model loaded; load one with `mgpud load demo`\n"
    assert json.loads(daemon.cli("ps", "--json").stdout) == {"models": [], "generations": []}


# -- "tiny" served on cpu:0 -----------------------------------------------------------------

def test_load_json(served: dict[str, Any], model_dir: Path) -> None:
    assert served["name"] == "tiny"
    assert served["state"] == "ready"
    assert (served["tp"], served["dp"], served["devices"]) == (1, 1, ["cpu:0"])
    assert served["model"] == str(model_dir)
    [replica] = served["stats"]["replicas"]
    assert replica["kv_bytes_per_rank"] == 8 << 20


def test_load_human_shows_progress_then_shape_and_kv(daemon: Daemon, served: dict[str, Any], model_dir: Path,
                                                     extra: list[str]) -> None:
    extra.append("second")
    result = daemon.cli(*load_args(model_dir, "second", "--max-model-len", "1024"))
    assert result.exit_code == 0, result.output
    first, replica, auto, *reasons = result.stdout.splitlines()
    assert re.fullmatch(r"second ready in [\d.]+ s: tp=1 x dp=1 on cpu:1, max_model_len 1,024", first)
    # 8 MiB / (2 layers x K,V x 2 heads x 16 x 4 bytes) = 16,384 tokens in blocks of 16
    assert re.fullmatch(r"  replica 0 on cpu:1: weights [\d.]+ KiB per rank, KV cache 8.0 MiB per rank = "
                        r"(1,024 blocks|16,384 tokens, 16 sequences of 1,024)", replica)
    assert "loading second: load" in result.stderr  # one line per phase away from a terminal
    assert "loading second: ready" in result.stderr
    assert auto == "  auto tp=1, auto dp=1"  # the planner chose both, and says why below
    assert reasons[0] == "  why this shape:"

    unloaded = daemon.cli("unload", "second")
    assert unloaded.exit_code == 0
    assert unloaded.stdout == "unloaded second\n"


def test_load_no_wait_returns_at_once(daemon: Daemon, served: dict[str, Any], model_dir: Path,
                                      extra: list[str]) -> None:
    extra.append("bg")
    result = daemon.cli(*load_args(model_dir, "bg", "--tp", "1", "--no-wait"))
    assert result.exit_code == 0, result.output
    assert re.match(r"loading bg in the background: tp=1 x dp=1( on cpu:1)?; follow it with `mgpud ps`", result.stdout)
    assert result.stderr == ""
    wait_for(lambda: (daemon.model("bg") or {}).get("state") == "ready", "bg to load", 120)
    assert daemon.cli("unload", "bg", "--force").stdout == "unloaded bg (running generations cancelled)\n"


def test_load_failures(daemon: Daemon, served: dict[str, Any], model_dir: Path, extra: list[str]) -> None:
    extra += ["wide", "lost", "ghost"]
    taken = daemon.cli(*load_args(model_dir, "tiny"))
    assert taken.exit_code == 1
    assert "already ready" in taken.stderr
    too_wide = daemon.cli(*load_args(model_dir, "wide", "--tp", "3"))  # 2 devices, 4 heads
    assert too_wide.exit_code == 1
    assert too_wide.stderr.startswith("mgpud: ") and len(too_wide.stderr.splitlines()) == 1
    unknown_device = daemon.cli(*load_args(model_dir, "lost", "--tp", "1", "--devices", "cpu:7"))
    assert unknown_device.exit_code == 2
    assert "unknown device 'cpu:7'" in unknown_device.stderr
    missing = daemon.cli(*load_args(model_dir.parent / "absent", "ghost", "--tp", "1"))
    assert missing.exit_code == 1


def test_ps(daemon: Daemon, served: dict[str, Any]) -> None:
    result = daemon.cli("ps")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "REPLICA", "TP", "x", "DP", "DEVICES", "STATE", "WEIGHTS", "MEMORY", "KV",
                              "USE", "RUN/WAIT", "TOK/S", "TTFT", "P95", "EXPERT", "BAL", "PIDS"]
    cells = row.split()
    assert cells[:8] == ["tiny", "0", "1", "x", "1", "cpu:0", "ready", served["stats"]["replicas"][0]["dtype"]]
    assert cells[-1] == str(served["stats"]["replicas"][0]["pids"][0])
    data = json.loads(daemon.cli("ps", "--json").stdout)
    assert [m["name"] for m in data["models"]] == ["tiny"]
    assert set(data["models"][0]) >= {"name", "state", "tp", "dp", "devices", "stats"}


def test_generate_streams_text_and_prints_figures(daemon: Daemon, served: dict[str, Any]) -> None:
    want = daemon.call("generate", model="tiny", prompt="Hello there", max_tokens=12, stream=False)
    result = daemon.cli("generate", "tiny", "Hello there", "--max-tokens", "12")
    assert result.exit_code == 0, result.output
    assert result.stdout == want["text"] + "\n"  # greedy: the same text
    assert re.fullmatch(r"\[12 tokens \(\d+ in prompt\), finish: length, TTFT [\d.,]+ ms, [\d.,]+ tok/s, "
                        r"total [\d.,]+ ms\]\n", result.stderr)
    no_stream = daemon.cli("generate", "tiny", "Hello there", "--max-tokens", "12", "--no-stream")
    assert no_stream.stdout == want["text"] + "\n"
    piped = daemon.cli("generate", "tiny", "-", "--max-tokens", "12", input="Hello there")
    assert piped.stdout == want["text"] + "\n"


def test_generate_json(daemon: Daemon, served: dict[str, Any]) -> None:
    result = daemon.cli("generate", "tiny", "Hello", "--max-tokens", "5", "--json", "--stop", "zzz")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {"text", "token_ids", "finish_reason", "usage", "timings"}
    assert re.fullmatch(r"gen-\d+", data["request_id"])  # what `mgpud cancel` takes
    assert len(data["token_ids"]) == data["usage"]["completion_tokens"] == 5
    assert data["finish_reason"] == "length"
    assert set(data["timings"]) >= {"ttft_ms", "total_ms", "decode_tokens_per_s"}
    assert result.stderr == ""


def test_generate_errors(daemon: Daemon, served: dict[str, Any]) -> None:
    unknown = daemon.cli("generate", "nosuch", "hi")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("mgpud: no model named 'nosuch' (loaded: tiny)")
    too_long = daemon.cli("generate", "tiny", "word " * (LONG + 10))
    assert too_long.exit_code == 1
    assert len(too_long.stderr.splitlines()) == 1


def test_ctrl_c_cancels_the_generation_on_the_daemon(daemon: Daemon, served: dict[str, Any]) -> None:
    before = daemon.model("tiny")["stats"]["generation_tokens_total"]
    proc = daemon.spawn("generate", "tiny", "Hello", "--max-tokens", str(LONG - 100), "--ignore-eos")
    assert proc.stdout is not None
    proc.stdout.read(1)  # tokens are streaming
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert re.fullmatch(r"\[cancelled on the daemon after \d+ tokens\]\n", err)

    # Running and the token count come in one report from the replica: once nothing runs,
    # the count is final.
    stats = wait_for(lambda: (s := daemon.model("tiny")["stats"])["running"] == 0 and s,
                     "the generation to stop", 30)
    generated = stats["generation_tokens_total"] - before
    assert generated < LONG // 2, f"{generated} tokens: the daemon went on generating"


def _generating(daemon: Daemon, count: int) -> tuple[list[subprocess.Popen[str]], list[str]]:
    """`count` long CLI generations streaming; their ids as the daemon lists them."""
    procs = [daemon.spawn("generate", "tiny", "Hello", "--max-tokens", str(LONG - 100), "--ignore-eos")
             for _ in range(count)]
    for proc in procs:
        assert proc.stdout is not None
        proc.stdout.read(1)  # tokens are streaming
    return procs, [g["id"] for g in daemon.call("models")["generations"]]


def _ended_cancelled(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "finish: cancelled" in err, err


def test_cancel_stops_the_generations_of_other_clients(daemon: Daemon, served: dict[str, Any]) -> None:
    procs, [one] = _generating(daemon, 1)
    listed = daemon.cli("ps").stdout.splitlines()
    assert listed[-2].split() == ["GENERATION", "MODEL", "VIA", "RUNNING"]
    assert listed[-1].split()[:3] == [one, "tiny", "control"]
    result = daemon.cli("cancel", one)
    assert (result.exit_code, result.stdout) == (0, f"cancelled {one}\n")
    _ended_cancelled(procs)
    gone = daemon.cli("cancel", one)
    assert gone.exit_code == 1 and f"no generation {one} is running" in gone.stderr
    procs, ids = _generating(daemon, 2)
    by_model = daemon.cli("cancel", "--model", "tiny", "--json")
    assert json.loads(by_model.stdout) == {"cancelled": True, "requests": ids}
    _ended_cancelled(procs)
    assert json.loads(daemon.cli("cancel", "--all", "--json").stdout) == {"cancelled": False, "requests": []}
    assert daemon.cli("cancel").exit_code == 2
    assert daemon.cli("cancel", "--model", "nosuch").exit_code == 1


def test_chat_keeps_history_until_reset(daemon: Daemon, served: dict[str, Any]) -> None:
    turns = "hello\nand again\n/reset\nhello\n/nonsense\n/exit\n"
    result = daemon.cli("chat", "tiny", "--max-tokens", "4", "--stats", input=turns)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("tiny> ") == 3
    assert "you> hello\n" in result.stdout
    prompts = [int(n) for n in re.findall(r"\((\d+) in prompt\)", result.stderr)]
    assert len(prompts) == 3
    assert prompts[1] > prompts[0]  # the second turn carries the first
    assert prompts[2] == prompts[0]  # /reset forgot it
    assert "(conversation reset)" in result.stderr
    assert "unknown command /nonsense" in result.stderr


def test_chat_with_an_unknown_model(daemon: Daemon, served: dict[str, Any]) -> None:
    result = daemon.cli("chat", "nosuch", input="hi\n")
    assert result.exit_code == 1
    assert "no model named 'nosuch'" in result.stderr


def test_metrics(daemon: Daemon, served: dict[str, Any]) -> None:
    human = daemon.cli("metrics")
    assert human.exit_code == 0
    assert re.match(r"daemon running for \S+( \S+)?: \d+ requests", human.stdout)
    assert re.search(r"^tiny\s+ready\s+0\s+0\s", human.stdout, re.MULTILINE)
    data = json.loads(daemon.cli("metrics", "--json").stdout)
    assert set(data) == {"daemon", "models", "devices"}
    assert data["models"]["tiny"]["stats"]["generation_tokens_total"] > 0


SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+$')


def test_metrics_prometheus(daemon: Daemon, served: dict[str, Any]) -> None:
    result = daemon.cli("metrics", "--prometheus")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    for line in lines:
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line
    text = result.stdout
    assert 'mgpud:num_requests_running{model_name="tiny",replica="0"} 0.0' in text
    assert re.search(r'^mgpud:generation_tokens_total\{model_name="tiny"\} [1-9]\d*\.0$', text, re.MULTILINE)
    assert re.search(r'^mgpud_dev_memory_bytes\{UUID="",device="cpu:0",.*use="weights"\} [1-9]', text, re.MULTILINE)
    assert re.search(r'^mgpud:time_to_first_token_seconds_count\{model_name="tiny"\} [1-9]', text, re.MULTILINE)
    assert "# TYPE mgpud_daemon_requests_total counter" in text


def test_top_without_the_dashboard(daemon: Daemon, served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mgpud.tui.app", None)  # as if the dashboard were not installed
    result = daemon.cli("top")
    assert result.exit_code == 1
    assert "the dashboard is not available" in result.stderr


def test_scale_reshards_live(daemon: Daemon, served: dict[str, Any]) -> None:
    result = daemon.cli("scale", "tiny", "--dp", "2")
    assert result.exit_code == 0, result.output
    summary, *replicas = result.stdout.splitlines()
    assert re.fullmatch(r"tiny: tp=1 x dp=1 -> tp=1 x dp=2 in [\d.]+ s; new requests held for \d+ ms", summary)
    assert [line.split(": ")[0] for line in replicas] == ["  replica 0 on cpu:0", "  replica 1 on cpu:1"]
    assert "reshaping tiny: replica 1 starting on cpu:1" in result.stderr
    back = daemon.cli("scale", "tiny", "--dp", "1", "--json")
    assert back.exit_code == 0, back.output
    data = json.loads(back.stdout)
    assert (data["from"], data["to"]) == ({"tp": 1, "dp": 2}, {"tp": 1, "dp": 1})
    assert len(data["model"]["devices"]) == 1


def test_scale_refusals(daemon: Daemon, served: dict[str, Any]) -> None:
    unknown = daemon.cli("scale", "nosuch", "--dp", "2")
    assert unknown.exit_code == 1
    assert "no model named 'nosuch'" in unknown.stderr
    impossible = daemon.cli("scale", "tiny", "--tp", "3")  # 4 heads, 2 devices
    assert impossible.exit_code == 1
    assert len(impossible.stderr.splitlines()) == 1


def test_unload_unknown_model(daemon: Daemon) -> None:
    result = daemon.cli("unload", "nosuch")
    assert result.exit_code == 1
    assert "no model named 'nosuch'" in result.stderr


# -- last: stop it ----------------------------------------------------------------------------

def test_shutdown(daemon: Daemon) -> None:
    result = daemon.cli("shutdown", "--timeout", "5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"stopping": True, "timeout": 5.0}
    assert daemon.proc.wait(timeout=60) == 0
    gone = daemon.cli("status")
    assert gone.exit_code == 3
    assert os.path.basename(f"{daemon.runtime_dir}/control.sock") in gone.stderr
