"""Clients of the control and events sockets: `Client` (blocking) and `AsyncClient`.

Both send the same messages (see docs/protocol.md) and treat silence the same way: when
no message comes for `timeout` seconds they ping the daemon; a daemon that answers the
ping is busy, not gone, so a long load or a queued generation is waited for, while a
dead or hung daemon raises `DaemonUnavailable` within two timeouts. Everything but the
waiting is in mgpud.ipc.core; here is only what blocking and asyncio do differently.

Neither class is safe to share between threads; `AsyncClient` may be shared between
tasks of one event loop (one task reading each stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from . import framing
from .core import DEFAULT_TIMEOUT, ClientCore, Inbox, Reply, StreamState, Watch, probe_socket
from .framing import RequestId

__all__ = ["DEFAULT_TIMEOUT", "AsyncClient", "AsyncStream", "Client", "Stream", "probe_socket"]


class Stream(StreamState):
    """The replies to one request: iterate for its frames; then `result` holds its result.

    An error reply raises RemoteError from the iteration."""

    def __init__(self, client: Client, inbox: Inbox) -> None:
        super().__init__(inbox)
        self._client = client

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # An iteration broken off (Ctrl-C) may be resumed, or followed by `cancel()` and
        # `wait()` for the final reply: the state lives in the stream, not in the loop.
        while self._pending():
            frame = self._take(self._client._next(self._inbox))
            if frame is not None:
                yield frame

    def wait(self) -> dict[str, Any]:
        """Skip the frames; return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def cancel(self) -> dict[str, Any]:
        """Ask the daemon to cancel this request; its stream then ends early."""
        return self._client.cancel(self.id)


class Client(ClientCore):
    """A blocking client of one daemon."""

    def __init__(self, runtime_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                 context: zmq.Context | None = None) -> None:
        super().__init__(runtime_dir, timeout)
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._clear()

    def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        """Send `op` and return its result (frames of a streaming op are skipped)."""
        return self.stream(op, **args).wait()

    def stream(self, op: str, /, **args: Any) -> Stream:
        """Send `op`; iterate the returned Stream for its frames."""
        if self._sock is None:
            self._sock = self._control_socket(self._ctx)
        inbox, data = self._open(op, args)
        self._sock.send(data)
        return Stream(self, inbox)

    def cancel(self, req_id: RequestId) -> dict[str, Any]:
        return self.call("cancel", id=req_id)

    def events(self, topics: tuple[str, ...] = ("",)) -> Iterator[dict[str, Any]]:
        """Events whose topic starts with one of `topics`, as {topic, time, data} maps.

        Subscribes at once (what is published before that is lost to this client).
        Telemetry comes twice a second; `timeout` seconds of silence raise DaemonUnavailable."""
        return self._events(self._events_socket(self._ctx, topics))

    def _events(self, sock: zmq.Socket) -> Iterator[dict[str, Any]]:
        try:
            while True:
                if not sock.poll(self.timeout * 1000):
                    raise self._no_event()
                yield framing.parse_event(sock.recv_multipart())
        finally:
            sock.close()

    def _next(self, inbox: Inbox) -> Reply:
        """The next reply in `inbox`, routing whatever the socket brings meanwhile."""
        assert self._sock is not None
        watch = Watch(self, inbox)
        while (msg := watch.next()) is None:
            if self._sock.poll(self.timeout * 1000):
                self._route(self._sock.recv())
            else:
                self._sock.send(watch.silence())
        return msg


class AsyncStream(StreamState):
    """`Stream` for asyncio: `async for frame in stream`, then `stream.result`."""

    def __init__(self, client: AsyncClient, inbox: Inbox) -> None:
        super().__init__(inbox)
        self._client = client

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while self._pending():
            frame = self._take(await self._client._next(self._inbox))
            if frame is not None:
                yield frame

    async def wait(self) -> dict[str, Any]:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def cancel(self) -> dict[str, Any]:
        return await self._client.cancel(self.id)


class AsyncClient(ClientCore):
    """An asyncio client of one daemon; requests may run concurrently."""

    def __init__(self, runtime_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                 context: zmq.asyncio.Context | None = None) -> None:
        super().__init__(runtime_dir, timeout)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._clear()

    async def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        return await self.stream(op, **args).wait()

    def stream(self, op: str, /, **args: Any) -> AsyncStream:
        if self._sock is None:
            self._sock = self._control_socket(self._ctx)
            self._reader = asyncio.get_running_loop().create_task(self._read())
        inbox, data = self._open(op, args)
        self._send(data)
        return AsyncStream(self, inbox)

    async def cancel(self, req_id: RequestId) -> dict[str, Any]:
        return await self.call("cancel", id=req_id)

    def events(self, topics: tuple[str, ...] = ("",)) -> AsyncIterator[dict[str, Any]]:
        """See Client.events; `async for event in client.events(...)`."""
        return self._events(self._events_socket(self._ctx, topics))

    async def _events(self, sock: zmq.asyncio.Socket) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                if not await sock.poll(self.timeout * 1000):
                    raise self._no_event()
                yield framing.parse_event(await sock.recv_multipart())
        finally:
            sock.close()

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        # A DEALER queues outgoing messages and never blocks on send: the future is done.
        self._sock.send(data)

    async def _read(self) -> None:
        """Route every message of the control socket, for as long as the client is open."""
        assert self._sock is not None
        while True:
            self._route(await self._sock.recv())

    async def _next(self, inbox: Inbox) -> Reply:
        """The next reply in `inbox`, which the reader task fills."""
        watch = Watch(self, inbox)
        while (msg := watch.next()) is None:
            if not await _arrival(watch.inboxes, self.timeout):
                self._send(watch.silence())
        return msg


async def _arrival(inboxes: tuple[Inbox, ...], timeout: float) -> bool:
    """Whether something reaches one of `inboxes` within `timeout` seconds."""
    arrived = asyncio.Event()
    for inbox in inboxes:
        inbox.wake = arrived.set
    try:
        await asyncio.wait_for(arrived.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        for inbox in inboxes:
            inbox.wake = None
