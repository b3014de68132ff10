"""The suite's wait helper: it returns what the condition gave, and a timeout says what it
waited for and what it last saw."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from waiting import until, wait_for


def test_wait_for_returns_the_first_true_value() -> None:
    values = iter([None, 0, "", {"state": "ready"}, "never reached"])
    assert wait_for(lambda: next(values), "the model", timeout=10) == {"state": "ready"}


def test_wait_for_names_the_condition_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the replicas; last value: \[\]\ndaemon log here") as info:
        wait_for(list, "the replicas", timeout=0.05, detail=lambda: "daemon log here")
    assert "timed out after 0.05 s" in str(info.value)


def test_wait_for_treats_ignored_exceptions_as_not_yet() -> None:
    calls = itertools.count()

    def answers() -> str:
        if next(calls) < 2:
            raise ConnectionError("not listening yet")
        return "pong"

    assert wait_for(answers, "the daemon", timeout=10, ignore=(ConnectionError,)) == "pong"

    def down() -> str:
        raise ConnectionError("down")

    with pytest.raises(AssertionError, match=r"last value: ConnectionError\('down'\)"):
        wait_for(down, "the daemon", timeout=0.05, ignore=(ConnectionError,))
    with pytest.raises(ValueError):  # anything else is the test's failure, at once
        wait_for(lambda: int("x"), "a number", timeout=10, ignore=(ConnectionError,))


def test_until_lets_other_tasks_run() -> None:
    async def main() -> list[int]:
        done: list[int] = []

        async def worker() -> None:
            for i in range(3):
                await asyncio.sleep(0)
                done.append(i)

        task = asyncio.create_task(worker())
        result = await until(None, lambda: len(done) == 3 and done, "the worker", timeout=10)
        await task
        return result

    assert asyncio.run(main()) == [0, 1, 2]
    with pytest.raises(AssertionError, match="waiting for nothing; last value: False"):
        asyncio.run(until(None, lambda: False, "nothing", timeout=0.05))
