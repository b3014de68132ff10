"""Peers' habits and models by name, against a real daemon (CPU devices): `stop`, `run`,
vLLM's flag spellings, JSON errors, a failed load's name taken again, Hugging Face ids
resolved from a cache laid out in a temporary directory, model roots."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from checkpoints import make_tiny_checkpoint
from mgpud.cli.main import cli
from test_cli import KV, Daemon, serving
from test_tui_terminal import Tmux, tmux  # noqa: F401  (the fixture: a private tmux server)


@pytest.fixture(scope="module")
def place() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mgpud-hab-"))  # short: a socket path holds 107 bytes
    yield root
    shutil.rmtree(root, ignore_errors=True)


REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def model_dir(place: Path) -> Path:
    return make_tiny_checkpoint(place / "models" / "tiny", "llama")


@pytest.fixture(scope="module")
def hub(place: Path) -> Path:
    """A Hugging Face cache holding testorg/tiny as the hub lays it out: files in blobs/,
    the snapshot's names linked to them, refs/main naming the snapshot."""
    cache = place / "hf"
    repo = cache / "models--testorg--tiny"
    snapshot = make_tiny_checkpoint(repo / "snapshots" / REVISION, "llama", seed=4)
    (repo / "blobs").mkdir()
    for n, file in enumerate(sorted(snapshot.iterdir())):
        blob = repo / "blobs" / f"blob{n}"
        file.rename(blob)
        file.symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return cache


@pytest.fixture(scope="module")
def daemon(place: Path, model_dir: Path, hub: Path) -> Iterator[Daemon]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_CACHE", str(hub))  # for the daemon and the commands run here
        with serving(place, "--model-root", str(model_dir.parent)) as d:
            yield d


def error_of(result: Any) -> dict[str, str]:
    """The --json error object a failed command printed on stdout."""
    return json.loads(result.stdout)["error"]


def test_vllm_flag_spellings_are_ours(daemon: Daemon) -> None:
    """Each spelling parses (the daemon answers not_found, exit 1, not a usage error, exit 2)."""
    for flags in (("--tensor-parallel-size", "1"), ("-tp", "1"), ("--data-parallel-size", "2"), ("-dp", "2")):
        scaled = daemon.cli("scale", "ghost", *flags, "--json")
        assert (scaled.exit_code, error_of(scaled)["code"]) == (1, "not_found"), flags
        loaded = daemon.cli("load", "testorg/absent", *flags, "--json")
        assert (loaded.exit_code, error_of(loaded)["code"]) == (1, "load_failed"), flags


def test_json_failures_print_an_error_object_with_the_same_exit_codes(daemon: Daemon) -> None:
    missing = daemon.cli("--json", "unload", "ghost")
    assert missing.exit_code == 1
    assert error_of(missing)["code"] == "not_found" and "ghost" in error_of(missing)["message"]
    assert missing.stderr == ""
    usage = daemon.cli("scale", "ghost", "--json")
    assert usage.exit_code == 2
    assert error_of(usage)["code"] == "usage" and "mgpud scale --help" in error_of(usage)["message"]
    plain = daemon.cli("unload", "ghost")
    assert plain.stdout == "" and plain.stderr.startswith("mgpud: no model named 'ghost'")


def test_json_failure_without_a_daemon(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ps", "--json", "--runtime-dir", str(tmp_path)])
    assert result.exit_code == 3
    assert error_of(result)["code"] == "no_daemon" and str(tmp_path) in error_of(result)["message"]


@pytest.mark.slow  # the daemon's first planner run measures the CPU
def test_a_failed_load_gives_its_name_to_the_next_load(daemon: Daemon, model_dir: Path) -> None:
    starved = daemon.cli("load", str(model_dir), "--name", "again", "--tp", "1", "--dp", "1",
                         "--kv-cache-memory", "1KiB")
    assert starved.exit_code == 1
    assert "KV cache" in starved.stderr
    assert (daemon.model("again") or {}).get("state") == "failed"
    retried = daemon.cli("load", str(model_dir), "--name", "again", "--devices", "cpu:1", "--kv-cache-memory", KV)
    assert retried.exit_code == 0, retried.output
    assert (daemon.model("again") or {}).get("state") == "ready"
    # The planner chose the shape: the load says so, the log too, each with the reasons.
    assert "  auto tp=1, auto dp=1\n  why this shape:" in retried.stdout
    assert "again: auto tp=1 auto dp=1 (" in daemon.log.read_text()
    assert daemon.cli("stop", "again").exit_code == 0


def test_run_loads_an_id_from_the_cache_offline_then_chats_and_reuses_it(daemon: Daemon) -> None:
    first = daemon.cli("run", "testorg/tiny", "-tp", "1", "-dp", "1", "--max-tokens", "3", input="hello\n/exit\n")
    assert first.exit_code == 0, first.output
    assert "tiny: tp=1 x dp=1 on cpu:" in first.stderr
    assert "tiny> " in first.stdout
    served = daemon.model("tiny")
    assert served is not None and (served["state"], served["model"]) == ("ready", "testorg/tiny")
    again = daemon.cli("run", "testorg/tiny", "--max-tokens", "3", input="hi\n")
    assert again.exit_code == 0, again.output
    assert "loading" not in again.stderr and "tiny> " in again.stdout
    by_name = daemon.cli("run", "tiny", "--max-tokens", "3", input="hi\n")
    assert by_name.exit_code == 0 and "tiny> " in by_name.stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_up_attaches_to_the_daemon_running(daemon: Daemon, tmux: Tmux) -> None:  # noqa: F811
    """With "tiny" served (the test above), `up` opens the dashboard on it, and quitting
    leaves the daemon and its model as they were."""
    command = f"{sys.executable} -m mgpud.cli up --runtime-dir {daemon.runtime_dir}; echo EXITED $?; sleep 600"
    tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command)
    tmux.until(lambda s: re.search(r"│ tiny .* ready", s), "the dashboard on the running daemon", timeout=60)
    tmux("send-keys", "-t", "top", "q")
    after = tmux.until(lambda s: "EXITED" in s, "mgpud up to finish", timeout=60)
    assert "EXITED 0" in after and "a daemon already answers here" in after
    assert "stopped the daemon" not in after
    assert (daemon.model("tiny") or {}).get("state") == "ready"
    assert daemon.cli("stop", "tiny").stdout == "unloaded tiny\n"
    assert daemon.model("tiny") is None


def test_an_id_not_in_the_cache_says_where_it_looked_and_how_to_fetch_it(daemon: Daemon, hub: Path) -> None:
    missing = daemon.cli("load", "testorg/absent", "--tp", "1")
    assert missing.exit_code == 1
    assert str(hub / "models--testorg--absent") in missing.stderr
    assert "mgpud pull testorg/absent" in missing.stderr


def test_model_roots_refuse_paths_outside_them(daemon: Daemon, place: Path, model_dir: Path) -> None:
    etc = daemon.cli("load", "/etc", "--tp", "1", "--json")
    assert etc.exit_code == 1
    assert error_of(etc)["code"] == "load_failed"
    assert "outside the model roots" in error_of(etc)["message"] and str(model_dir.parent) in error_of(etc)["message"]
    elsewhere = place / "elsewhere"
    shutil.copytree(model_dir, elsewhere)
    sneaky = model_dir.parent / "sneaky"
    sneaky.symlink_to(elsewhere)  # inside by its name, outside once resolved
    linked = daemon.cli("load", str(sneaky), "--tp", "1")
    assert linked.exit_code == 1 and "outside the model roots" in linked.stderr
    sneaky.unlink()


def test_list_shows_the_models_on_disk(daemon: Daemon, model_dir: Path) -> None:
    result = daemon.cli("list", "--json")
    assert result.exit_code == 0, result.output
    found = {m["ref"]: m for m in json.loads(result.stdout)["models"]}
    assert found["testorg/tiny"]["source"] == "hf"
    assert found[str(model_dir)]["source"] == "root"
    for ref in ("testorg/tiny", str(model_dir)):
        assert found[ref]["architecture"] == "LlamaForCausalLM"
        assert found[ref]["size_bytes"] > 100_000  # the weights, through the hub's links too
        assert found[ref]["fits"] is True
    text = daemon.cli("list")
    assert "testorg/tiny" in text.stdout and "yes (tp=" in text.stdout


def test_pull_offline_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    result = CliRunner().invoke(cli, ["pull", "testorg/tiny"])
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE" in result.stderr and "cannot be downloaded" in result.stderr
    assert CliRunner().invoke(cli, ["pull", "not-an-id"]).exit_code == 2
    # No way to the hub (nothing listens where it should be): one line that says so.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "mgpud.cli", "pull", "testorg/tiny", "--json"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "failed" and "hub is unreachable" in error["message"] and "\n" not in error["message"]
    assert not any(tmp_path.glob("models--testorg--tiny/snapshots/*/*"))
