"""What `Client` and `AsyncClient` share; none of it waits on a socket.

Request ids and encoding, routing each reply to the inbox of its request, a stream's
state from its frames to its final reply, the liveness rule of docs/protocol.md ("when
nothing has arrived for `timeout` seconds, send a ping ..."), and the sockets' setup once
their owner is one to trust (mgpud.ipc.trust).
The two clients add only how they wait: a blocking poll, or asyncio.
"""

from __future__ import annotations

import errno
import itertools
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from mgpud.units import fmt_bytes

from . import framing, paths, trust
from .errors import BadRequest, DaemonUnavailable, ProtocolError, RemoteError
from .framing import FRAME, RequestId
from .trust import UnsafePath

DEFAULT_TIMEOUT = 5.0  # seconds

Reply = dict[str, Any]  # a parsed message of the control socket (see framing.parse_reply)


JOIN_GROUP = "add your user to the mgpud group and log in again"


def probe_socket(path: Path) -> None:
    """Raise DaemonUnavailable unless something listens on the socket file `path`, owned
    by a user this client trusts (mgpud.ipc.trust.check_socket)."""
    try:
        trust.check_socket(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DaemonUnavailable(str(path), "the socket file does not exist") from None
    except PermissionError:
        raise DaemonUnavailable(str(path), "permission denied", JOIN_GROUP) from None
    except UnsafePath as exc:
        raise DaemonUnavailable(str(path), exc.problem, exc.fix) from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except PermissionError:
            raise DaemonUnavailable(str(path), "permission denied", JOIN_GROUP) from None
        except OSError as exc:
            why = "nothing listens on it" if exc.errno == errno.ECONNREFUSED else exc.strerror
            raise DaemonUnavailable(str(path), why) from None


def _socket(ctx: zmq.Context, kind: int, path: Path) -> zmq.Socket:
    # ZeroMQ connects lazily and silently; probing first turns "no daemon" into an error now.
    probe_socket(path)
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, framing.MAX_REPLY_BYTES)
    return sock


class Inbox:
    """The replies routed to one request, oldest first (a ProtocolError where the
    connection delivered garbage). `wake`, when set, is called on each arrival: the asyncio
    client uses it to resume the task that waits; the blocking one routes as it waits."""

    def __init__(self, req_id: RequestId) -> None:
        self.id = req_id
        self.items: deque[Reply | ProtocolError] = deque()
        self.wake: Callable[[], None] | None = None

    def put(self, item: Reply | ProtocolError) -> None:
        self.items.append(item)
        if self.wake is not None:
            self.wake()


class ClientCore:
    """The state of one client's connection, without the socket I/O."""

    def __init__(self, runtime_dir: str | Path | None, timeout: float) -> None:
        self.runtime_dir = paths.runtime_dir(runtime_dir)
        self.control_path = paths.control_path(self.runtime_dir)
        self.events_path = paths.events_path(self.runtime_dir)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._inboxes: dict[RequestId, Inbox] = {}

    def _control_socket(self, ctx: zmq.Context) -> zmq.Socket:
        sock = _socket(ctx, zmq.DEALER, self.control_path)
        sock.connect(paths.endpoint(self.control_path))
        return sock

    def _events_socket(self, ctx: zmq.Context, topics: tuple[str, ...]) -> zmq.Socket:
        sock = _socket(ctx, zmq.SUB, self.events_path)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(paths.endpoint(self.events_path))
        return sock

    def _open(self, op: str, args: dict[str, Any]) -> tuple[Inbox, bytes]:
        """A new request: the inbox its replies will reach, and the message to send.

        The arguments are not validated here: the daemon does that and answers bad_request.
        Refused here is only what cannot reach the daemon: values msgpack cannot encode, and
        a message over the size limit (ZeroMQ drops the connection, the daemon never answers)."""
        req_id = next(self._ids)
        try:
            data = framing.request(req_id, op, {k: v for k, v in args.items() if v is not None})
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadRequest(f"{op}: the arguments cannot be sent: {exc}") from None
        if len(data) > framing.MAX_REQUEST_BYTES:
            raise BadRequest(f"{op}: the request takes {fmt_bytes(len(data))}; the protocol "
                             f"accepts at most {fmt_bytes(framing.MAX_REQUEST_BYTES)}")
        inbox = self._inboxes[req_id] = Inbox(req_id)
        return inbox, data

    def _forget(self, inbox: Inbox) -> None:
        """Stop routing to `inbox`: later replies to its request are dropped."""
        self._inboxes.pop(inbox.id, None)

    def _route(self, data: bytes) -> None:
        """Deliver one message of the control socket to the inbox of its request.

        A final reply retires the inbox (nothing more comes for it; the stream keeps its
        inbox to read it). Replies to requests given up on are dropped. An undecodable
        message reaches every waiter as a ProtocolError: the connection is not to be trusted."""
        try:
            msg = framing.parse_reply(data)
        except ProtocolError as exc:
            for inbox in list(self._inboxes.values()):
                inbox.put(exc)
            return
        inbox = self._inboxes.get(msg["id"])
        if inbox is None:
            return
        if msg["type"] != FRAME:
            self._forget(inbox)
        inbox.put(msg)

    def _no_event(self) -> DaemonUnavailable:
        return DaemonUnavailable(str(self.events_path), f"no event for {self.timeout:g} s")

    def _clear(self) -> None:
        self._inboxes.clear()


class Watch:
    """One wait for the next reply to a request, under the liveness rule: after `timeout`
    seconds of silence the client pings the daemon; a daemon that answers is busy, not
    gone, so the wait goes on; a second silence with the ping unanswered raises
    DaemonUnavailable. The client calls `next()` after each arrival, `silence()` after
    each timeout, and waits for messages to any of `inboxes`."""

    def __init__(self, core: ClientCore, inbox: Inbox) -> None:
        self.core = core
        self.inbox = inbox
        self.probe: Inbox | None = None  # the ping in flight, if any

    @property
    def inboxes(self) -> tuple[Inbox, ...]:
        return (self.inbox,) if self.probe is None else (self.inbox, self.probe)

    def next(self) -> Reply | None:
        """The request's next reply, if one has come; raises a ProtocolError routed to it."""
        if self.probe is not None and self.probe.items:
            self.probe = None  # answered: the daemon lives
        if not self.inbox.items:
            return None
        if self.probe is not None:
            self.core._forget(self.probe)  # its answer, should it come, is no longer needed
            self.probe = None
        item = self.inbox.items.popleft()
        if isinstance(item, ProtocolError):
            raise item
        return item

    def silence(self) -> bytes:
        """After `timeout` seconds without a message: the ping to send, or DaemonUnavailable."""
        if self.probe is not None:
            self.core._forget(self.probe)
            raise DaemonUnavailable(str(self.core.control_path), f"no reply within {self.core.timeout:g} s")
        self.probe, data = self.core._open("ping", {})
        return data


class StreamState:
    """One request as its caller sees it: `id`, then its frames, then `result`.

    An error reply raises RemoteError (a BadRequest for bad_request), then and on any later read."""

    def __init__(self, inbox: Inbox) -> None:
        self.id: RequestId = inbox.id
        self.result: dict[str, Any] | None = None
        self._inbox = inbox
        self._error: RemoteError | None = None

    def _pending(self) -> bool:
        """Whether replies are still to come; re-raises the error reply that ended the stream."""
        if self._error is not None:
            raise self._error
        return self.result is None

    def _take(self, msg: Reply) -> dict[str, Any] | None:
        """The frame carried by `msg`; None when `msg` was the final reply (kept in `result`)."""
        try:
            payload = framing.reply_payload(msg)
        except RemoteError as exc:
            self._error = exc
            raise
        if msg["type"] == FRAME:
            return payload
        self.result = payload
        return None
