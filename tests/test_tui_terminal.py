"""The dashboard in a real terminal: tmux at 120x40 (and 80x24) against a running daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mgpud.daemon.testing import DaemonProcess
from test_tui_daemon import daemon  # noqa: F401  (the fixture: a daemon serving tiny)
from waiting import wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]

# A pane that survives the dashboard, so that what it leaves behind can be read.
AFTER = "echo EXITED $?; sleep 600"


class Tmux:
    """One session on a private tmux server (never the user's), its socket in `socket`."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
                              check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def until(self, ready: Callable[[str], object], what: str, timeout: float = 30.0) -> str:
        """The screen, once `ready(screen)` holds."""
        def shown() -> str | None:
            screen = self.screen()
            return screen if ready(screen) else None

        return wait_for(shown, what, timeout, detail=lambda: f"the terminal shows:\n{self.screen()}", interval=0.1)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    session = Tmux(tmp_path / "tmux.sock")
    yield session
    subprocess.run(["tmux", "-S", str(session.socket), "kill-server"], capture_output=True, check=False)


def tokens_per_s(screen: str) -> float:
    match = re.search(r"tiny\s+([\d.]+) tok/s", screen)
    return float(match.group(1)) if match else 0.0


def uptime(screen: str) -> str | None:
    match = re.search(r" up (\S+)", screen)
    return match.group(1) if match else None


def test_dashboard_in_tmux(daemon: DaemonProcess, tmux: Tmux) -> None:  # noqa: F811
    command = f"{sys.executable} -m mgpud.tui --runtime-dir {daemon.runtime_dir}; {AFTER}"
    tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command)

    first = tmux.until(lambda s: "cpu:1" in s and re.search(r"│ tiny .* ready", s), "the devices and the model")
    assert "cpu:0" in first and "● connected" in first
    tmux.until(lambda s: uptime(s) not in (None, uptime(first)), "the uptime to move")
    with daemon.client() as client:
        client.call("generate", model="tiny", prompt="The daemon serves", max_tokens=32, ignore_eos=True)
    tmux.until(lambda s: tokens_per_s(s) > 0, "tokens/s to rise")

    # At 80x24 what an nvitop user looks at first stays: utilization and temperature.
    tmux("resize-window", "-t", "top", "-x", "80", "-y", "24")
    small = tmux.until(lambda s: re.search(r"UTIL\s+TEMP\s+HELD BY", s) and len(s.splitlines()) <= 24,
                       "UTIL and TEMP at 80x24")
    assert "tiny r0 rank0" in small and max(map(len, small.splitlines())) <= 80
    tmux("resize-window", "-t", "top", "-x", "120", "-y", "40")

    tmux("send-keys", "-t", "top", "q")
    after = tmux.until(lambda s: "EXITED" in s, "the dashboard to quit")
    assert "EXITED 0" in after
    assert "Devices" not in after  # the alternate screen is gone with its contents
    flags = tmux("display", "-p", "-t", "top", "#{alternate_on} #{mouse_any_flag} #{cursor_flag} #{keypad_flag}")
    assert flags.split() == ["0", "0", "1", "0"]  # normal screen, no mouse reporting, cursor shown
