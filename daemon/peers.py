"""Noticing that a control-socket client went away (its process killed, its socket closed)
so that its running requests are cancelled at once rather than generating for nobody.

ZeroMQ hides connections behind identities, so two facts are joined: each message says
which file descriptor it came through (ZMQ_SRCFD), and the socket monitor says which
descriptor closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)


class Peers:
    def __init__(self, control: zmq.asyncio.Socket, on_gone: Callable[[bytes], None]) -> None:
        self._fds: dict[bytes, int] = {}  # client identity -> the descriptor it last wrote from
        self._holders: dict[int, set[bytes]] = {}  # the same, the other way round
        self._stale: dict[int, int] = {}  # descriptor -> closes already acted on, their events still to come
        self._on_gone = on_gone
        self._monitor = control.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def seen(self, identity: bytes, message: zmq.Frame) -> None:
        """Remember the connection `message` (received with copy=False) came through."""
        fd = message.get(zmq.SRCFD)
        if self._fds.get(identity) == fd:
            return  # every message but a client's first: nothing to do on the loop
        # Closes already reported happened before this message came (libzmq reports a close
        # before it accepts the next connection on that descriptor): acted on first, none of
        # them is taken for the newcomer's, also a close of a connection that never spoke.
        self._drain()
        # The kernel reuses a closed descriptor at once: a new client may write through it
        # before the monitor reports the old one's close. Whoever held it is gone now, and
        # that close event, when it comes, must not take the newcomer with it.
        for who in list(self._holders.get(fd, ())):
            self._stale[fd] = self._stale.get(fd, 0) + 1
            self._gone(who)
        if identity in self._fds:
            self._holders[self._fds[identity]].discard(identity)
        self._fds[identity] = fd
        self._holders.setdefault(fd, set()).add(identity)

    async def watch(self) -> None:
        """Forever: a connection closed -> its clients' requests are cancelled."""
        while True:
            self._closed(parse_monitor_message(await self._monitor.recv_multipart())["value"])

    def _drain(self) -> None:
        # Only what is there: a refused non-blocking read would leave an exception whose
        # traceback holds the caller's frame (and the message in it) until the next GC.
        while self._monitor.get(zmq.EVENTS) & zmq.POLLIN:
            self._closed(parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK).result())["value"])

    def _closed(self, fd: int) -> None:
        if self._stale.get(fd):
            self._stale[fd] -= 1
            return
        for who in list(self._holders.get(fd, ())):
            self._gone(who)

    def _gone(self, who: bytes) -> None:
        self._holders[self._fds.pop(who)].discard(who)
        log.debug("client %s went away; cancelling its requests", who.hex())
        self._on_gone(who)

    def close(self) -> None:
        self._monitor.close(linger=0)
