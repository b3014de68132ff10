"""Clients of the control and events sockets: `Client` (blocking) and `AsyncClient`.

Both send the same messages (see docs/protocol.md) and treat silence the same way: when
no message comes for `timeout` seconds they ping the daemon; a daemon that answers the
ping is busy, not gone, so a long load or a queued generation is waited for, while a
dead or hung daemon raises `DaemonUnavailable` within two timeouts.

Neither class is safe to share between threads; `AsyncClient` may be shared between
tasks of one event loop.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from . import framing, paths
from .errors import DaemonUnavailable, ProtocolError
from .framing import FRAME, RequestId
from .schema import check_args

DEFAULT_TIMEOUT = 5.0  # seconds


def probe_socket(path: Path) -> None:
    """Raise DaemonUnavailable unless something listens on the socket file `path`."""
    if not path.exists():
        raise DaemonUnavailable(str(path), "the socket file does not exist")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except PermissionError:
            raise DaemonUnavailable(
                str(path), "permission denied: add your user to the mgpud group") from None
        except OSError as exc:
            why = "nothing listens on it" if exc.errno == errno.ECONNREFUSED else exc.strerror
            raise DaemonUnavailable(str(path), why) from None


def _control_socket(ctx: zmq.Context, path: Path) -> zmq.Socket:
    probe_socket(path)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, framing.MAX_REPLY_BYTES)
    sock.connect(paths.endpoint(path))
    return sock


def _events_socket(ctx: zmq.Context, path: Path, topics: tuple[str, ...]) -> zmq.Socket:
    probe_socket(path)
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, framing.MAX_REPLY_BYTES)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(paths.endpoint(path))
    return sock


def _request(req_id: RequestId, op: str, args: dict[str, Any]) -> bytes:
    check_args(op, args)  # fail here, before a round trip, with the daemon's own message
    return framing.request(req_id, op, {k: v for k, v in args.items() if v is not None})


class Stream:
    """The messages of one request: iterate for its frames; then `result` holds its result.

    An error reply raises RemoteError from the iteration."""

    def __init__(self, client: Client, req_id: RequestId) -> None:
        self.id = req_id
        self.result: dict[str, Any] | None = None
        self._client = client

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # The request's queue stays until its result arrives, so that an iteration broken
        # off (Ctrl-C) can still `cancel()` and then `wait()` for the final reply.
        while self.result is None:
            msg = self._client._next(self.id)
            if msg["type"] != FRAME:
                self._client._pending.pop(self.id, None)
            payload = framing.reply_payload(msg)
            if msg["type"] != FRAME:
                self.result = payload
                return
            yield payload

    def wait(self) -> dict[str, Any]:
        """Skip the frames; return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def cancel(self) -> dict[str, Any]:
        """Ask the daemon to cancel this request; its stream then ends early."""
        return self._client.cancel(self.id)


class Client:
    """A blocking client of one daemon."""

    def __init__(self, runtime_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                 context: zmq.Context | None = None) -> None:
        self.runtime_dir = paths.runtime_dir(runtime_dir)
        self.control_path = paths.control_path(self.runtime_dir)
        self.events_path = paths.events_path(self.runtime_dir)
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, deque[dict[str, Any]]] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._pending.clear()

    def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        """Send `op` and return its result (frames of a streaming op are skipped)."""
        return self.stream(op, **args).wait()

    def stream(self, op: str, /, **args: Any) -> Stream:
        """Send `op`; iterate the returned Stream for its frames."""
        return Stream(self, self._send(op, args))

    def cancel(self, req_id: RequestId) -> dict[str, Any]:
        return self.call("cancel", id=req_id)

    def events(self, topics: tuple[str, ...] = ("",)) -> Iterator[dict[str, Any]]:
        """Events whose topic starts with one of `topics`, as {topic, time, data} maps.

        Subscribes at once (what is published before that is lost to this client).
        Telemetry comes twice a second; `timeout` seconds of silence raise DaemonUnavailable."""
        return self._events(_events_socket(self._ctx, self.events_path, topics))

    def _events(self, sock: zmq.Socket) -> Iterator[dict[str, Any]]:
        try:
            while True:
                if not sock.poll(self.timeout * 1000):
                    raise DaemonUnavailable(str(self.events_path), f"no event for {self.timeout:g} s")
                yield framing.parse_event(sock.recv_multipart())
        finally:
            sock.close()

    def _send(self, op: str, args: dict[str, Any]) -> RequestId:
        req_id = next(self._ids)
        data = _request(req_id, op, args)
        if self._sock is None:
            self._sock = _control_socket(self._ctx, self.control_path)
        self._pending[req_id] = deque()
        self._sock.send(data)
        return req_id

    def _next(self, req_id: RequestId) -> dict[str, Any]:
        """The next message for `req_id`, pinging the daemon whenever it is quiet."""
        queue = self._pending[req_id]
        probe: RequestId | None = None
        while not queue:
            assert self._sock is not None
            if not self._sock.poll(self.timeout * 1000):
                if probe is not None:
                    raise DaemonUnavailable(str(self.control_path), f"no reply within {self.timeout:g} s")
                probe = self._send("ping", {})
                continue
            msg = framing.parse_reply(self._sock.recv())
            if msg.get("id") == probe:
                self._pending.pop(probe, None)
                probe = None
            elif msg.get("id") in self._pending:
                self._pending[msg["id"]].append(msg)
            # anything else answers a request this client gave up on: dropped
        if probe is not None:
            self._pending.pop(probe, None)
        return queue.popleft()


class AsyncStream:
    """`Stream` for asyncio: `async for frame in stream`, then `stream.result`."""

    def __init__(self, client: AsyncClient, req_id: RequestId, queue: asyncio.Queue[Any]) -> None:
        self.id = req_id
        self.result: dict[str, Any] | None = None
        self._client = client
        self._queue = queue

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            while self.result is None:
                msg = await self._client._next(self._queue)
                payload = framing.reply_payload(msg)
                if msg["type"] != FRAME:
                    self.result = payload
                    return
                yield payload
        finally:
            self._client._pending.pop(self.id, None)

    async def wait(self) -> dict[str, Any]:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def cancel(self) -> dict[str, Any]:
        return await self._client.cancel(self.id)


class AsyncClient:
    """An asyncio client of one daemon; requests may run concurrently."""

    def __init__(self, runtime_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                 context: zmq.asyncio.Context | None = None) -> None:
        self.runtime_dir = paths.runtime_dir(runtime_dir)
        self.control_path = paths.control_path(self.runtime_dir)
        self.events_path = paths.events_path(self.runtime_dir)
        self.timeout = timeout
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, asyncio.Queue[Any]] = {}

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
        self._pending.clear()

    async def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        return await self.stream(op, **args).wait()

    def stream(self, op: str, /, **args: Any) -> AsyncStream:
        req_id, queue = self._send(op, args)
        return AsyncStream(self, req_id, queue)

    async def cancel(self, req_id: RequestId) -> dict[str, Any]:
        return await self.call("cancel", id=req_id)

    def events(self, topics: tuple[str, ...] = ("",)) -> AsyncIterator[dict[str, Any]]:
        """See Client.events; `async for event in client.events(...)`."""
        return self._events(_events_socket(self._ctx, self.events_path, topics))

    async def _events(self, sock: zmq.asyncio.Socket) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                if not await sock.poll(self.timeout * 1000):
                    raise DaemonUnavailable(str(self.events_path), f"no event for {self.timeout:g} s")
                yield framing.parse_event(await sock.recv_multipart())
        finally:
            sock.close()

    def _send(self, op: str, args: dict[str, Any]) -> tuple[RequestId, asyncio.Queue[Any]]:
        req_id = next(self._ids)
        data = _request(req_id, op, args)
        if self._sock is None:
            self._sock = _control_socket(self._ctx, self.control_path)
            self._reader = asyncio.get_running_loop().create_task(self._read())
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending[req_id] = queue
        # A DEALER queues outgoing messages and never blocks on send; the future is done.
        self._sock.send(data)
        return req_id, queue

    async def _read(self) -> None:
        assert self._sock is not None
        while True:
            try:
                msg = framing.parse_reply(await self._sock.recv())
            except ProtocolError as exc:
                for queue in self._pending.values():  # every waiter learns why
                    queue.put_nowait(exc)
                continue
            queue = self._pending.get(msg["id"])
            if queue is not None:
                queue.put_nowait(msg)

    async def _next(self, queue: asyncio.Queue[Any]) -> dict[str, Any]:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), self.timeout)
            except asyncio.TimeoutError:
                await self._probe()
                continue
            if isinstance(item, ProtocolError):
                raise item
            return item

    async def _probe(self) -> None:
        req_id, queue = self._send("ping", {})
        try:
            await asyncio.wait_for(queue.get(), self.timeout)
        except asyncio.TimeoutError:
            raise DaemonUnavailable(str(self.control_path), f"no reply within {self.timeout:g} s") from None
        finally:
            self._pending.pop(req_id, None)
