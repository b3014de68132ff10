"""The control socket's door: each request decoded and validated (ipc.schema.parse_request)
without stalling the event loop, and admitted in the order its client sent it.

A request of a few KiB parses in microseconds, on the loop. A large one (a prompt of
2^20 token ids parses in about 0.15 s) is parsed in a thread: parsed on the loop, eight
of them, received one after the other, held a ping for over a second. One thread parses
them all, so at most one parse competes with the loop for the GIL. A client's later
requests wait for its earlier large one, so that a `cancel` never overtakes its `generate`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mgpud.ipc.schema import BadRequest, Request, parse_request

PARSE_ON_LOOP = 64 << 10  # bytes: requests up to this size are parsed on the loop

Parsed = Request | BadRequest
Admit = Callable[[list[bytes], Parsed], None]
Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


class Door:
    def __init__(self, admit: Admit, spawn: Spawn) -> None:
        self._admit = admit  # takes a parsed request (or the BadRequest it raised) in order
        self._spawn = spawn
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="mgpud-parse")
        self._waiting: dict[bytes, asyncio.Task[None]] = {}  # client -> its last request parsing

    def enter(self, envelope: list[bytes], payload: bytes) -> None:
        client = envelope[0]
        earlier = self._waiting.get(client)
        if earlier is None and len(payload) <= PARSE_ON_LOOP:
            self._admit(envelope, parse(payload))
            return
        self._waiting[client] = self._spawn(self._parse_aside(envelope, payload, earlier), "request parse")

    async def _parse_aside(self, envelope: list[bytes], payload: bytes, earlier: asyncio.Task[None] | None) -> None:
        parsed = await asyncio.get_running_loop().run_in_executor(self._parser, parse, payload)
        if earlier is not None:
            await asyncio.wait([earlier])
        if self._waiting.get(envelope[0]) is asyncio.current_task():
            del self._waiting[envelope[0]]
        self._admit(envelope, parsed)

    def close(self) -> None:
        self._parser.shutdown(wait=False, cancel_futures=True)


def parse(payload: bytes) -> Parsed:
    """The request, or the BadRequest that refuses it."""
    try:
        return parse_request(payload)
    except BadRequest as exc:
        return exc
