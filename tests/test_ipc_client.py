"""Clients facing no daemon, a dead one, or one that never answers."""

from __future__ import annotations

import asyncio
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from mgpud.ipc import AsyncClient, BadRequest, Client, DaemonUnavailable, RemoteError, framing, paths
from mgpud.ipc.schema import parse_request


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
    # Refused at connect, not after a wait: a client that sent the request into the void
    # would give up later with "no reply within 5 s" instead.
    with pytest.raises(DaemonUnavailable, match="nothing listens on it"):
        Client(rdir, timeout=5).call("status")


def _silent_router(rdir: Path) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(paths.endpoint(rdir / "control.sock"))
    return sock


def _refuse_at_the_door(router: zmq.Socket) -> str:
    """Answer one request as the daemon's door does when it is malformed; the message."""
    assert router.poll(5000), "the client sent nothing"
    identity, payload = router.recv_multipart()
    with pytest.raises(BadRequest) as info:
        parse_request(payload)
    router.send_multipart([identity, framing.error(info.value.req_id, info.value.code, info.value.message)])
    return info.value.message


@pytest.mark.parametrize("op, args", [("fly", {}), ("load", {"model": "demo", "tp": "two"})])
def test_bad_arguments_are_sent_and_the_daemons_refusal_raised(rdir: Path, op: str, args: dict) -> None:
    router = _silent_router(rdir)
    try:
        with Client(rdir) as client:
            stream = client.stream(op, **args)  # no check of its own: sent as given
            refusal = _refuse_at_the_door(router)
            with pytest.raises(BadRequest) as info:
                stream.wait()
        assert (info.value.code, info.value.message) == ("bad_request", refusal)
        assert isinstance(info.value, RemoteError)  # an error reply like any other

        async def main() -> None:
            async with AsyncClient(rdir) as aclient:
                stream = aclient.stream(op, **args)
                await asyncio.get_running_loop().run_in_executor(None, _refuse_at_the_door, router)
                with pytest.raises(BadRequest, match=re.escape(refusal)):
                    await stream.wait()

        asyncio.run(main())
    finally:
        router.close()


def test_hung_daemon_times_out_after_a_ping(rdir: Path) -> None:
    router = _silent_router(rdir)
    try:
        with pytest.raises(DaemonUnavailable, match="no reply within 0.2 s"):
            Client(rdir, timeout=0.2).call("status")
        # It gave up only after the liveness ping went unanswered too.
        ops = []
        for _ in range(2):
            assert router.poll(10_000), f"only {ops} arrived"
            ops.append(framing.unpack(router.recv_multipart()[-1])["op"])
        assert ops == ["status", "ping"]
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
