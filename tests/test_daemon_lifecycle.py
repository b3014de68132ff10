"""Start-up, stop, signals, systemd notifications and the state file, with real processes."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import Client, DaemonUnavailable
from waiting import wait_for


def test_sigterm_exits_0_and_removes_its_sockets() -> None:
    with DaemonProcess() as d:
        control = d.runtime_dir / "control.sock"
        assert stat.S_IMODE(control.stat().st_mode) & 0o007 == 0  # umask 007: no access for others
        assert d.stop() == 0
        assert not control.exists() and not (d.runtime_dir / "events.sock").exists()
        assert "stopped" in d.log()


def test_shutdown_operation_exits_0() -> None:
    with DaemonProcess() as d:
        assert d.call("shutdown", timeout=5) == {"stopping": True, "timeout": 5.0}
        assert d.wait() == 0


def test_stale_sockets_are_removed() -> None:
    d = DaemonProcess()
    try:
        d.runtime_dir.mkdir(parents=True)
        for name in ("control.sock", "events.sock"):
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(str(d.runtime_dir / name))
            stale.close()  # the file stays behind, as after kill -9
        d.start()
        assert d.call("ping")["pong"]
        assert "removing the stale socket" in d.log()
    finally:
        d.close()


def test_a_second_daemon_refuses_to_start() -> None:
    with DaemonProcess() as first:
        second = subprocess.run([sys.executable, "-m", "mgpud.daemon", *first.args],
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 1
        assert f"pid {first.proc.pid} answers on {first.runtime_dir}/control.sock" in second.stderr
        assert first.call("ping")["pong"]


class NotifySocket:
    """A stand-in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def until(self, line: str, timeout: float = 30.0) -> list[list[str]]:
        """Messages received up to and including the first holding `line` (those after it
        stay queued for the next call)."""
        seen: list[list[str]] = []

        def received() -> list[list[str]] | None:
            while not seen or line not in seen[-1]:
                try:
                    seen.append(self.sock.recv(4096, socket.MSG_DONTWAIT).decode().split("\n"))
                except BlockingIOError:
                    return None
            return seen

        return wait_for(received, f"{line} on the notification socket", timeout, detail=lambda: f"received {seen}")


def test_systemd_notifications(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    d = DaemonProcess(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    try:
        d.start()
        before_ready = notify.until("READY=1")
        with d.client(timeout=1.0) as c:  # READY=1 came after the socket answered
            assert c.call("ping")["pong"]
        ready = before_ready[-1]
        assert f"MAINPID={d.proc.pid}" in ready and any(x.startswith("STATUS=") for x in ready)
        watchdogs = sum("WATCHDOG=1" in m for m in notify.until("WATCHDOG=1") + notify.until("WATCHDOG=1"))
        assert watchdogs >= 2
        d.signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.until("STOPPING=1")[-1]
        assert d.wait() == 0
    finally:
        d.close()


def test_sighup_reloads_the_config(tmp_path: Path) -> None:
    config = tmp_path / "mgpud.toml"
    config.write_text("shutdown_timeout = 7\n")
    with DaemonProcess("--config", str(config)) as d:
        with d.client() as c:
            events = c.events(("event", "telemetry"))
            next(events)  # subscribed: a PUB socket drops what it sends before that
            config.write_text("shutdown_timeout = 3\n[engine]\nmax_num_seqs = 8\n")
            d.signal(signal.SIGHUP)
            wait_for(lambda: next(events)["data"].get("kind") == "config_reloaded", "the config_reloaded event", 30)
            events.close()
            config.write_text("shutdown_timeout = -1\n")  # a bad config is refused, the old one kept
            d.signal(signal.SIGHUP)
            wait_for(lambda: "reload failed" in d.log(), "the refusal of the bad config", 30, detail=d.log)
            assert c.call("shutdown") == {"stopping": True, "timeout": 3.0}
        assert d.wait() == 0


def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "mgpud.toml"
    config.write_text("colour = 'blue'\n")
    run = subprocess.run([sys.executable, "-m", "mgpud.daemon", "--config", str(config)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "unknown setting(s) colour" in run.stderr


def test_state_file_models_come_back_even_when_they_fail(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    spec = {"model": "/nonexistent/model", "name": "gone", "tp": 1, "dp": 1}
    (state / "state.json").write_text(json.dumps({"version": 1, "models": [spec]}))
    notify = NotifySocket(tmp_path / "notify")
    with DaemonProcess(state_dir=state, env={"NOTIFY_SOCKET": str(notify.path)}) as d:
        messages = notify.until("READY=1")  # only once the restore is over
        extend = [i for i, m in enumerate(messages) if any(x.startswith("EXTEND_TIMEOUT_USEC=") for x in m)]
        assert extend and extend[0] < len(messages) - 1
        with d.client(timeout=30) as c:
            d.wait_running()
            models = c.call("models")["models"]
            assert models[0]["name"] == "gone" and models[0]["state"] == "failed"
            assert "config.json" in models[0]["error"]
            c.call("unload", name="gone")
        assert json.loads((state / "state.json").read_text())["models"] == []
        assert d.stop() == 0


@pytest.mark.parametrize("path", ["/tmp/" + "x" * 120])
def test_too_long_runtime_dir_is_explained(path: str) -> None:
    run = subprocess.run([sys.executable, "-m", "mgpud.daemon", "--runtime-dir", path],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and "too long for a Unix socket" in run.stderr
    assert not Path(path).exists()


def test_client_sees_daemon_go_away() -> None:
    with DaemonProcess() as d:
        client = Client(d.runtime_dir, timeout=0.5)
        assert client.call("ping")["pong"]
        d.proc.kill()
        d.proc.wait()
        with pytest.raises(DaemonUnavailable, match="no reply within 0.5 s"):
            client.call("status")
