"""A real daemon process on a private runtime directory, for tests of the daemon and of
the programs that talk to it (CLI, dashboard)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mgpud.ipc import Client, DaemonUnavailable


class DaemonProcess:
    """`with DaemonProcess() as d: d.client().call("status")`. The runtime directory is
    short (under /tmp) because a Unix socket path holds at most 107 bytes. The HTTP API
    is off unless `http` gives an address ("127.0.0.1:0": a free port, see `http_url`).
    It keeps no warm workers unless `args` ask for them ("--warm-workers", "2"): most
    daemons in tests never load a model, and each warm worker imports torch."""

    def __init__(self, *args: str, devices: str = "cpu:2", state_dir: Path | None = None,
                 env: dict[str, str] | None = None, http: str = "off") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mgpud-"))
        self.runtime_dir = self.root / "run"
        self.state_dir = state_dir or self.root / "state"
        self.log_path = self.root / "daemon.log"
        self.args = ["--runtime-dir", str(self.runtime_dir), "--state-dir", str(self.state_dir),
                     "--devices", devices, "--log-level", "debug", "--http", http, "--warm-workers", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        """Start it and wait until its control socket answers."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "mgpud.daemon", *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.wait_answering(timeout)
        return self

    def wait_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self.client(timeout=0.5) as client:
                    client.call("ping")
                return
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the daemon did not answer in {timeout} s:\n{self.log()}") from None
                time.sleep(0.05)

    def wait_running(self, timeout: float = 60.0) -> None:
        """Until the daemon has brought back its models (its state turns from loading to running)."""
        deadline = time.monotonic() + timeout
        while self.call("status")["state"] != "running":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the daemon was not running after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.runtime_dir, timeout=timeout)

    @property
    def http_url(self) -> str:
        """The HTTP API's base URL, as the daemon reports it (its port when asked for 0)."""
        return self.call("status")["http"]

    def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        with self.client() as client:
            return client.call(op, **args)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
