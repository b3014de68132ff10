"""The command line without a daemon: help, usage errors, exit codes, `plan`, completion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from checkpoints import make_tiny_checkpoint
from mgpud.cli.main import cli

COMMANDS = ("serve", "status", "devices", "gpus", "ps", "load", "unload", "scale", "generate", "cancel", "chat",
            "run", "plan", "top", "metrics", "shutdown", "version", "completion")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A runtime directory where no daemon listens."""
    return str(tmp_path_factory.mktemp("no-daemon"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "llama")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_explains_with_an_example(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout
    assert "Usage: " in result.stdout


def test_root_help_lists_commands_and_exit_codes() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in set(COMMANDS) - {"gpus"}:
        assert f"  {command} " in result.stdout
    assert "3 daemon" in result.stdout


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom mgpud.cli.main import main\nsys.argv = ['mgpud', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'LIGHT', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stderr.strip().endswith("LIGHT"), done.stderr


@pytest.mark.parametrize("command", [("status",), ("ps",), ("devices",), ("metrics",), ("shutdown",),
                                     ("top",), ("load", "demo"), ("generate", "m", "hi"), ("unload", "m")])
def test_no_daemon_exits_3_with_the_hint(nowhere: str, command: tuple[str, ...]) -> None:
    result = run("--runtime-dir", nowhere, *command)
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"no daemon at {nowhere}/control.sock" in lines[0]
    assert "`systemctl start mgpud` or `mgpud serve`" in lines[0]
    assert result.stdout == ""


def test_global_options_go_after_the_command_too(nowhere: str) -> None:
    result = run("ps", "--runtime-dir", nowhere, "--timeout", "0.5")
    assert result.exit_code == 3
    assert nowhere in result.stderr


def test_version_works_without_a_daemon(nowhere: str) -> None:
    human = run("--runtime-dir", nowhere, "version")
    assert human.exit_code == 0
    assert human.stdout.startswith("mgpud 0.1.0\ndaemon: not reachable")
    data = json.loads(run("--runtime-dir", nowhere, "version", "--json").stdout)
    assert data == {"cli": "0.1.0", "daemon": None}


@pytest.mark.parametrize("args", [
    ("load", "demo", "--tp", "-1"),
    ("load", "demo", "--tp", "two"),
    ("load", "demo", "--kv-cache-memory", "lots"),
    ("load", "demo", "--gpu-memory-utilization", "1.5"),
    ("load", "demo", "--dtype", "int3"),
    ("load", "demo", "--name", "bad name"),  # refused by the protocol's own check, before sending
    ("generate", "m", "hi", "--temperature", "hot"),
    ("generate", "m", "hi", "--max-tokens", "0"),
    ("generate", "m", "hi", "--top-p", "0"),
    ("generate", "m"),
    ("scale", "m"),
    ("completion", "tcsh"),
    ("--timeout", "0", "ps"),
    ("frobnicate",),
    ("serve", "--log-level", "loud"),
    ("serve", "--device-memory", "much"),
])
def test_bad_flag_values_exit_2_on_one_line(nowhere: str, args: tuple[str, ...]) -> None:
    result = run("--runtime-dir", nowhere, *args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("mgpud")


def test_serve_with_an_unreadable_config_exits_2(tmp_path: Path) -> None:
    result = run("serve", "--config", str(tmp_path / "absent.toml"), "--runtime-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_plan_table_and_json(model_dir: Path) -> None:
    human = run("plan", str(model_dir), "--devices", "cpu:2", "--max-model-len", "256")
    assert human.exit_code == 0, human.output
    assert "Chosen: tp=1" in human.stdout
    assert "weights/dev" in human.stdout
    data = json.loads(run("plan", str(model_dir), "--devices", "cpu:2", "--max-model-len", "256", "--json").stdout)
    assert data["chosen"] == [1, 2]
    assert data["max_model_len"] == 256
    assert {(s["tp"], s["dp"]) for s in data["shapes"]} == {(1, 1), (1, 2), (2, 1)}


def test_plan_presets_on_described_devices() -> None:
    result = run("plan", "Llama-3.1-70B", "--devices", "8xH100-80GB", "--max-model-len", "8192", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["chosen"][0] >= 2


def test_plan_failures(model_dir: Path) -> None:
    impossible = run("plan", str(model_dir), "--devices", "cpu:3", "--tp", "3")
    assert impossible.exit_code == 1
    assert "tp=3 is impossible" in impossible.stdout
    unknown = run("plan", "no-such-model")
    assert unknown.exit_code == 1
    assert "no such model directory" in unknown.stderr
    bad_devices = run("plan", str(model_dir), "--devices", "cpu:zero")
    assert bad_devices.exit_code == 2
    assert bad_devices.stderr.startswith("mgpud: --devices:")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = run("completion", shell)
    assert result.exit_code == 0
    assert "_MGPUD_COMPLETE" in result.stdout
