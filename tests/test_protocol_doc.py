"""docs/protocol.md's client from scratch, run as written: its runtime directory, its
socket check, its liveness rule, against a real daemon and against silent ones."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import paths

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def example() -> tuple[str, str]:
    """The example's functions, and the code from `path = ...` on, without its last loop."""
    text = DOC.read_text()
    code = re.search(r"## A client from scratch.*?```python\n(.*?)```", text, re.DOTALL).group(1)
    head, connect = code.split("\npath = ", 1)
    return head, "path = " + connect.split("\nfor kind, body in request(")[0]


def client(runtime_dir: Path, monkeypatch: pytest.MonkeyPatch, timeout: float = 5.0) -> dict[str, Any]:
    """The example's namespace, connected to `runtime_dir`."""
    monkeypatch.setenv("MGPUD_RUNTIME_DIR", str(runtime_dir))
    head, connect = example()
    ns: dict[str, Any] = {}
    exec(head, ns)  # noqa: S102 (the doc's code, run as a reader would)
    ns["TIMEOUT"] = timeout
    exec(connect, ns)  # noqa: S102
    return ns


def test_runtime_dir_in_the_documented_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ns: dict[str, Any] = {}
    exec(example()[0], ns)  # noqa: S102
    for var in ("MGPUD_RUNTIME_DIR", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    steps = [("XDG_RUNTIME_DIR", str(tmp_path / "gone")), ("XDG_RUNTIME_DIR", str(tmp_path)),
             ("RUNTIME_DIRECTORY", "/run/mgpud:/run/other"), ("MGPUD_RUNTIME_DIR", "/srv/m")]
    assert Path(ns["runtime_dir"]()) == paths.runtime_dir()
    for var, value in steps:
        monkeypatch.setenv(var, value)
        assert Path(ns["runtime_dir"]()) == paths.runtime_dir(), (var, value)


def test_against_a_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    with DaemonProcess() as daemon:
        ns = client(daemon.runtime_dir, monkeypatch)
        try:
            [(kind, status)] = list(ns["request"]("status"))
            assert kind == "result" and status["state"] == "running"
            with pytest.raises(RuntimeError, match="not_found: "):
                list(ns["request"]("unload", name="nope"))
        finally:
            ns["sock"].close(linger=0)


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[tuple[Path, dict[str, float]]]:
    """A ROUTER on tmp_path/control.sock that answers pings and, after `delay` seconds
    (infinite: never), each other request; it answers nothing while `hung`."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(f"ipc://{tmp_path / 'control.sock'}")
    knobs = {"delay": 0.0, "hung": 0.0, "stop": 0.0}
    thread = threading.Thread(target=_serve, args=(sock, knobs), daemon=True)
    thread.start()
    yield tmp_path, knobs
    knobs["stop"] = 1
    thread.join()
    sock.close(linger=0)


def _serve(sock: zmq.Socket, knobs: dict[str, float]) -> None:
    held: list[tuple[float, bytes, int]] = []
    while not knobs["stop"]:
        if sock.poll(20):
            who, data = sock.recv_multipart()
            msg = msgpack.unpackb(data)
            due = time.monotonic() + (0 if msg["op"] == "ping" else knobs["delay"])
            held.append((due, who, msg["id"]))
        for item in [h for h in held if h[0] <= time.monotonic() and not knobs["hung"]]:
            held.remove(item)
            reply = {"v": 1, "id": item[2], "type": "result", "result": {"pong": True}}
            sock.send_multipart([item[1], msgpack.packb(reply)])


def test_a_busy_daemon_is_waited_for(fake_daemon: tuple[Path, dict[str, float]],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rdir, knobs = fake_daemon
    knobs["delay"] = 1.0  # five timeouts, each bridged by an answered ping
    ns = client(rdir, monkeypatch, timeout=0.2)
    try:
        assert list(ns["request"]("status")) == [("result", {"pong": True})]
    finally:
        ns["sock"].close(linger=0)


def test_a_hung_daemon_is_given_up_after_two_timeouts(fake_daemon: tuple[Path, dict[str, float]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rdir, knobs = fake_daemon
    knobs["hung"] = 1
    ns = client(rdir, monkeypatch, timeout=0.2)
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match="does not answer"):
            list(ns["request"]("status"))
    finally:
        ns["sock"].close(linger=0)
    assert 0.4 <= time.monotonic() - start < 3.0
