"""Peers' habits and models by name, against a real daemon (CPU devices): `stop`, `run`,
vLLM's flag spellings, JSON errors, a failed load's name taken again, Hugging Face ids
resolved from a cache laid out in a temporary directory, model roots."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from checkpoints import make_tiny_checkpoint
from mgpud.cli.main import cli
from test_cli import KV, Daemon, serving
from waiting import wait_for


@pytest.fixture(scope="module")
def place() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mgpud-hab-"))  # short: a socket path holds 107 bytes
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def model_dir(place: Path) -> Path:
    return make_tiny_checkpoint(place / "models" / "tiny", "llama")


@pytest.fixture(scope="module")
def daemon(place: Path, model_dir: Path) -> Iterator[Daemon]:
    with serving(place) as d:
        yield d


def error_of(result: Any) -> dict[str, str]:
    """The --json error object a failed command printed on stdout."""
    return json.loads(result.stdout)["error"]


def test_vllm_flag_spellings_load_and_scale(daemon: Daemon, model_dir: Path) -> None:
    loaded = daemon.cli("load", str(model_dir), "--name", "v", "--tensor-parallel-size", "1", "-dp", "1",
                        "--kv-cache-memory", KV, "--json")
    assert loaded.exit_code == 0, loaded.output
    assert (json.loads(loaded.stdout)["tp"], json.loads(loaded.stdout)["dp"]) == (1, 1)
    scaled = daemon.cli("scale", "v", "--data-parallel-size", "2", "-tp", "1", "--json")
    assert scaled.exit_code == 0, scaled.output
    assert json.loads(scaled.stdout)["to"] == {"tp": 1, "dp": 2}
    stopped = daemon.cli("stop", "v")
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout == "unloaded v\n"
    assert daemon.model("v") is None


def test_json_failures_print_an_error_object_with_the_same_exit_codes(daemon: Daemon) -> None:
    missing = daemon.cli("--json", "unload", "ghost")
    assert missing.exit_code == 1
    assert error_of(missing)["code"] == "not_found" and "ghost" in error_of(missing)["message"]
    assert missing.stderr == ""
    usage = daemon.cli("scale", "ghost", "--json")
    assert usage.exit_code == 2
    assert error_of(usage) == {"code": "usage", "message": "give --tp, --dp or both (see `mgpud scale --help`)"}
    plain = daemon.cli("unload", "ghost")
    assert plain.stdout == "" and plain.stderr.startswith("mgpud: no model named 'ghost'")


def test_json_failure_without_a_daemon(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ps", "--json", "--runtime-dir", str(tmp_path)])
    assert result.exit_code == 3
    assert error_of(result)["code"] == "no_daemon" and str(tmp_path) in error_of(result)["message"]


def test_a_failed_load_gives_its_name_to_the_next_load(daemon: Daemon, model_dir: Path) -> None:
    starved = daemon.cli("load", str(model_dir), "--name", "again", "--tp", "1", "--dp", "1",
                         "--kv-cache-memory", "1KiB")
    assert starved.exit_code == 1
    assert "KV cache" in starved.stderr
    assert (daemon.model("again") or {}).get("state") == "failed"
    retried = daemon.cli("load", str(model_dir), "--name", "again", "--tp", "1", "--dp", "1",
                         "--kv-cache-memory", KV)
    assert retried.exit_code == 0, retried.output
    assert (daemon.model("again") or {}).get("state") == "ready"
    assert daemon.cli("stop", "again").exit_code == 0


def test_run_loads_then_chats_and_reuses_what_is_served(daemon: Daemon, model_dir: Path) -> None:
    first = daemon.cli("run", str(model_dir), "--max-tokens", "3", input="hello\n/exit\n")
    assert first.exit_code == 0, first.output
    assert "tiny: tp=" in first.stderr
    assert "tiny> " in first.stdout
    served = daemon.model("tiny")
    assert served is not None and served["state"] == "ready"
    again = daemon.cli("run", str(model_dir), "--max-tokens", "3", input="hi\n")
    assert again.exit_code == 0, again.output
    assert "loading" not in again.stderr and "tiny> " in again.stdout
    by_name = daemon.cli("run", "tiny", "--max-tokens", "3", input="hi\n")
    assert by_name.exit_code == 0 and "tiny> " in by_name.stdout
    daemon.call("unload", name="tiny", force=True)
    wait_for(lambda: daemon.model("tiny") is None, "tiny to unload")
