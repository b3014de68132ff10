"""Which control-socket clients went away, on real ZeroMQ sockets: a descriptor the kernel
hands to a new client before the old one's close is reported must not take the new one.

The clients live in another process, so that this process's descriptors change only with
the server's accepts and closes (the kernel hands out the lowest free one)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import zmq
import zmq.asyncio
from mgpud.daemon.peers import Peers

# Reads "open NAME" / "silent NAME" / "close NAME" lines; an opened client says hello once,
# a silent one connects and never speaks (as a liveness probe does).
CLIENTS = """
import sys, zmq
ctx, socks = zmq.Context(), {}
for line in sys.stdin:
    verb, name = line.split()
    if verb == "close":
        socks.pop(name).close(linger=0)
        continue
    socks[name] = ctx.socket(zmq.DEALER)
    socks[name].connect(sys.argv[1])
    if verb == "open":
        socks[name].send(name.encode())
"""


class _Server:
    def __init__(self, ctx: zmq.asyncio.Context, address: str) -> None:
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind(address)
        self.gone: list[str] = []
        self.names: dict[bytes, str] = {}
        self.peers = Peers(self.router, lambda who: self.gone.append(self.names[who]))
        self.watcher: asyncio.Future[None] | None = None

    async def receive(self) -> int:
        """Take the next hello; the descriptor it came through."""
        identity, body = await self.router.recv_multipart(copy=False)
        self.names[identity.bytes] = body.bytes.decode()
        self.peers.seen(identity.bytes, body)
        return body.get(zmq.SRCFD)

    async def until(self, condition: object) -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)  # polling a condition: the kernel and libzmq give no event here


Say = Callable[[str], None]


def _run(tmp_path: Path, scenario: Callable[[_Server, Say], Awaitable[None]]) -> None:
    """`scenario` against a server on a fresh socket, its clients in a process of their own
    that `say` drives."""
    address = f"ipc://{tmp_path}/control.sock"
    clients = subprocess.Popen([sys.executable, "-c", CLIENTS, address], stdin=subprocess.PIPE, text=True)

    def say(line: str) -> None:
        clients.stdin.write(line + "\n")  # type: ignore[union-attr]
        clients.stdin.flush()  # type: ignore[union-attr]

    async def serve() -> None:
        ctx = zmq.asyncio.Context()
        server = _Server(ctx, address)
        try:
            await scenario(server, say)
        finally:
            if server.watcher:
                server.watcher.cancel()
            server.peers.close()
            ctx.destroy(linger=0)

    try:
        asyncio.run(asyncio.wait_for(serve(), 30))
    finally:
        clients.kill()
        clients.wait()


async def _reuse(server: _Server, say: Say) -> None:
    say("open old")
    old_fd = await server.receive()
    say("close old")
    await server.until(lambda: not os.path.exists(f"/proc/self/fd/{old_fd}"))
    say("open new")  # through the same descriptor, before anyone read the old one's close
    assert await server.receive() == old_fd
    assert server.gone == ["old"]  # seen as gone the moment its descriptor came back
    server.watcher = asyncio.ensure_future(server.peers.watch())
    # Close events come in order: once a later client's is reported, the old one's was read.
    say("open later")
    await server.receive()
    say("close later")
    await server.until(lambda: "later" in server.gone)
    assert server.gone == ["old", "later"]
    say("close new")
    await server.until(lambda: "new" in server.gone)
    assert server.gone == ["old", "later", "new"]


def test_a_reused_descriptor_cancels_only_the_client_that_left(tmp_path: Path) -> None:
    _run(tmp_path, _reuse)


def _sockets() -> set[str]:
    """This process's socket descriptors (listing the directory opens one that is gone by
    the time it is read)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(fd)
        except FileNotFoundError:
            pass
    return found


async def _silent_then_reuse(server: _Server, say: Say) -> None:
    before = _sockets()
    say("silent quiet")
    await server.until(lambda: _sockets() - before)  # accepted: a descriptor of its own
    [quiet] = _sockets() - before
    say("close quiet")
    await server.until(lambda: quiet not in _sockets())
    say("open new")  # its descriptor, while the quiet one's close is still unread
    assert await server.receive() == int(quiet)
    server.watcher = asyncio.ensure_future(server.peers.watch())
    say("open later")
    await server.receive()
    say("close later")
    await server.until(lambda: "later" in server.gone)
    assert server.gone == ["later"]  # the quiet one's close did not take the new client


def test_a_client_that_never_spoke_takes_no_one_with_it(tmp_path: Path) -> None:
    _run(tmp_path, _silent_then_reuse)
