"""`mgpud up` (the README's first command) in a real terminal: it starts a daemon, loads
the model, opens the dashboard, and quitting the dashboard stops what it started."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import psutil
import pytest

from test_tui_terminal import Tmux, tmux  # noqa: F401  (the fixture: a private tmux server)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


def _daemons(runtime_dir: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if "mgpud.daemon" in " ".join(p.info["cmdline"] or []) and str(runtime_dir) in " ".join(p.info["cmdline"])]


def test_up_starts_everything_and_quitting_stops_it(tiny_llama: Path, tmp_path: Path, tmux: Tmux) -> None:  # noqa: F811
    runtime = tmp_path / "run"
    # A private state directory: the daemon must not bring back models of another run.
    command = (f"XDG_STATE_HOME={tmp_path / 'state'} {sys.executable} -m mgpud.cli up --runtime-dir {runtime} --model {tiny_llama} --name tiny "
               f"--devices cpu:2 --max-model-len 256 --kv-cache-memory 4MiB; echo EXITED $?; sleep 600")
    tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command)
    screen = tmux.until(lambda s: re.search(r"│ tiny .* ready", s), "the dashboard with the model", timeout=90)
    assert "cpu:0" in screen and "cpu:1" in screen
    assert len(_daemons(runtime)) == 1

    tmux("send-keys", "-t", "top", "q")
    after = tmux.until(lambda s: "EXITED" in s, "mgpud up to finish", timeout=60)
    assert "EXITED 0" in after and "stopped the daemon" in after
    assert _daemons(runtime) == []
