"""Waiting for a condition, for every test: poll it until it holds or fail with what was seen.

A test never sleeps in place of waiting: it names the condition and waits for it, with a
timeout generous enough for a loaded 2-core machine (a timeout only bounds a failure; a
passing test takes as long as the condition takes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from textual.pilot import Pilot

T = TypeVar("T")

INTERVAL = 0.02  # seconds between two polls


def _timed_out(what: str, timeout: float, last: object, detail: Callable[[], object] | None) -> AssertionError:
    message = f"timed out after {timeout:g} s waiting for {what}; last value: {last!r}"
    if detail is not None:
        message += f"\n{detail()}"
    return AssertionError(message)


def wait_for(check: Callable[[], T], what: str, timeout: float = 30.0, *,
             ignore: tuple[type[BaseException], ...] = (),
             detail: Callable[[], object] | None = None, interval: float = INTERVAL) -> T:
    """Call `check()` until it returns something true, and return that.

    After `timeout` seconds the test fails with a message naming `what`, the last value
    `check()` returned (or the exception of a type in `ignore` it last raised, which counts
    as "not yet"), and `detail()` when given (a log, a screen). A costly check (one that
    spawns a process) may poll less often: `interval` seconds apart."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value: Any = check()
        except ignore as exc:
            value = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, value, detail)
        time.sleep(interval)


async def until(pilot: Pilot[Any] | None, check: Callable[[], T], what: str, timeout: float = 10.0, *,
                detail: Callable[[], object] | None = None) -> T:
    """`wait_for` inside an event loop: between polls, `pilot.pause()` lets a Textual app
    process its messages (without a pilot, the loop runs its other tasks)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, value, detail)
        if pilot is None:
            await asyncio.sleep(INTERVAL)
        else:
            await pilot.pause(INTERVAL)
    return value
