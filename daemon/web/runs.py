"""The choices of one HTTP request running together, each exactly as a `generate` on the
control socket runs (the same manager call, the same counters, the same cancellation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any

from mgpud.ipc.errors import MgpudError

from ..generation import HTTP_CLIENT, Call
from .failures import ApiError

if TYPE_CHECKING:
    from ..server import Daemon


class Run:
    """Choice i's frames arrive as (i, frame, None); its end as (i, None, result)."""

    def __init__(self, daemon: Daemon, choices: list[dict[str, Any]]) -> None:
        self._daemon = daemon
        self._events: asyncio.Queue[tuple[int, dict[str, Any] | None, Any]] = asyncio.Queue()
        self._calls = [Call(HTTP_CLIENT, "generate", partial(self._frame, i)) for i in range(len(choices))]
        self._tasks = [asyncio.get_running_loop().create_task(self._generate(args, call), name="http generate")
                       for args, call in zip(choices, self._calls)]
        for i, task in enumerate(self._tasks):
            task.add_done_callback(partial(self._done, i))

    def _frame(self, index: int, frame: dict[str, Any]) -> None:
        self._events.put_nowait((index, frame, None))

    def _done(self, index: int, task: asyncio.Task[dict[str, Any]]) -> None:
        if task.cancelled():
            outcome: Any = ApiError(503, "service_unavailable", "the generation was cancelled")
        else:
            outcome = task.exception() or task.result()
        self._events.put_nowait((index, None, outcome))

    async def _generate(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        counters = self._daemon.counters
        counters["op:generate"] += 1
        try:
            return await self._daemon.models.generate(args, call)
        except MgpudError as exc:
            counters[f"error:{exc.code}"] += 1
            raise ApiError.from_code(exc.code, exc.message) from None

    async def events(self) -> AsyncIterator[tuple[int, dict[str, Any] | None, Any]]:
        """Frames and ends in the order they happen, until every choice has ended; an end
        carries the choice's result, or the ApiError that ended it."""
        left = len(self._tasks)
        while left:
            event = await self._events.get()
            left -= event[1] is None
            yield event

    async def results(self) -> list[dict[str, Any]]:
        """Every choice's result; the first failure raises (the others are cancelled)."""
        try:
            return list(await asyncio.gather(*self._tasks))
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Stop every choice still running (the client went away): its KV is freed at once."""
        for call, task in zip(self._calls, self._tasks):
            if not task.done():
                call.cancel()
