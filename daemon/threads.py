"""Running blocking engine calls off the event loop, and getting back onto it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def in_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `fn` in a daemon thread: unlike asyncio.to_thread, a model load still running
    when the daemon exits does not hold the process up."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def run() -> None:
        try:
            result, ok = fn(), True
        except BaseException as exc:  # delivered to the awaiting coroutine
            result, ok = exc, False
        call_soon(loop, settle, ok, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """From an engine thread, run fn on the loop; once the loop is closed, nobody listens."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass
