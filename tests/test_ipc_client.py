"""Clients facing no daemon, a dead one, or one that never answers."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from mgpud.ipc import AsyncClient, BadRequest, Client, DaemonUnavailable, paths


@pytest.fixture
def rdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mgpud-") as d:  # short: Unix socket paths are capped
        yield Path(d)


def test_missing_socket_names_path_and_remedy(rdir: Path) -> None:
    with pytest.raises(DaemonUnavailable) as info:
        Client(rdir).call("status")
    text = str(info.value)
    assert str(rdir / "control.sock") in text and "does not exist" in text
    assert "systemctl start mgpud" in text and "mgpud serve" in text
    assert info.value.code == "no_daemon"


def test_stale_socket_file(rdir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(rdir / "control.sock"))
    stale.close()  # the file stays, nothing listens: what a killed daemon leaves
    start = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="nothing listens on it"):
        Client(rdir, timeout=5).call("status")
    assert time.monotonic() - start < 1.0


def test_bad_arguments_fail_before_any_connection(rdir: Path) -> None:
    with pytest.raises(BadRequest, match="unknown operation"):
        Client(rdir).call("fly")
    with pytest.raises(BadRequest, match="'tp' must be an integer"):
        Client(rdir).call("load", model="demo", tp="two")


def _silent_router(rdir: Path) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(paths.endpoint(rdir / "control.sock"))
    return sock


def test_hung_daemon_times_out_after_a_ping(rdir: Path) -> None:
    router = _silent_router(rdir)
    try:
        start = time.monotonic()
        with pytest.raises(DaemonUnavailable, match="no reply within 0.2 s"):
            Client(rdir, timeout=0.2).call("status")
        assert 0.35 < time.monotonic() - start < 2.0
        assert router.poll(0)  # the request and the liveness ping did arrive
    finally:
        router.close()


def test_async_client_missing_and_hung(rdir: Path) -> None:
    async def main() -> None:
        with pytest.raises(DaemonUnavailable, match="does not exist"):
            await AsyncClient(rdir).call("ping")
        router = _silent_router(rdir)
        try:
            async with AsyncClient(rdir, timeout=0.2) as client:
                with pytest.raises(DaemonUnavailable, match="no reply"):
                    await client.call("status")
        finally:
            router.close()

    asyncio.run(main())


def test_events_without_daemon(rdir: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="events.sock"):
        next(Client(rdir).events())
