"""No input stalls the daemon's loop: prompts of the documented maximum size, refused as
too long after a bounded part of each is tokenized, while another client pings; and the
memory they took is handed back; the door that parses large requests off the loop."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from checkpoints import make_tiny_checkpoint
from mgpud.daemon.door import Door
from mgpud.daemon.testing import DaemonProcess
from mgpud.engine.core.prepared import PreparedModel
from mgpud.engine.exceptions import InvalidRequest
from mgpud.engine.serving.prompts import PIECE_CHARS, prompt_ids
from mgpud.ipc import framing
from mgpud.ipc.schema import MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS
from waiting import wait_for

# Eight clients at once, each sending one maximum-size prompt of every kind, from their own
# process: the pinging process must not compete with them for its GIL.
SENDERS = """
import json, sys, threading
from mgpud.ipc import Client, RemoteError
text = ("hello world " * (int(sys.argv[2]) // 12 + 1))[:int(sys.argv[2])]
kinds = [{"prompt": text}, {"messages": [{"role": "user", "content": text}]}, {"prompt": [7] * int(sys.argv[3])}]
refusals = []
def send(args):
    with Client(sys.argv[1], timeout=60) as c:
        try:
            c.call("generate", model="tiny", max_tokens=4, stream=False, **args)
        except RemoteError as exc:
            refusals.append([exc.code, exc.message])
for args in kinds:
    clients = [threading.Thread(target=send, args=(args,)) for _ in range(8)]
    [t.start() for t in clients]
    [t.join() for t in clients]
print(json.dumps(refusals))
"""


@contextmanager
def pinging(daemon: DaemonProcess) -> Iterator[list[float]]:
    """Ping the daemon from another client every 10 ms; the seconds each answer took."""
    took: list[float] = []
    done = threading.Event()

    def run() -> None:
        with daemon.client(timeout=30) as c:
            while not done.is_set():
                start = time.monotonic()
                c.call("ping")
                took.append(time.monotonic() - start)
                time.sleep(0.01)

    thread = threading.Thread(target=run)
    gc.disable()  # a full collection in this process (torch is loaded) pauses it 0.1-0.3 s
    thread.start()
    try:
        yield took
    finally:
        done.set()
        thread.join()
        gc.enable()


def test_maximum_size_prompts_leave_pings_answered_and_memory_returned(tiny_llama: Path) -> None:
    with DaemonProcess() as d:
        d.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=1, kv_cache_memory=2 << 20, max_model_len=256)
        daemon = psutil.Process(d.proc.pid)
        baseline = daemon.memory_info().rss
        with pinging(d) as took:
            run = subprocess.run([sys.executable, "-c", SENDERS, str(d.runtime_dir), str(MAX_PROMPT_CHARS),
                                  str(MAX_PROMPT_TOKENS)], check=False, capture_output=True, text=True, timeout=120)
        refusals = json.loads(run.stdout or "null") or run.stderr
        assert len(refusals) == 24 and all(code == "invalid_request" and "max_model_len is 256" in message
                                           for code, message in refusals), refusals
        assert len(took) > 10 and max(took) < 0.25, sorted(took)[-5:]
        wait_for(lambda: daemon.memory_info().rss <= 1.1 * baseline, "the daemon's RSS back within 10%", 10,
                 detail=lambda: f"baseline {baseline >> 20} MiB, now {daemon.memory_info().rss >> 20} MiB")


@pytest.fixture(scope="module")
def long_context(tmp_path_factory: pytest.TempPathFactory) -> PreparedModel:
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama", max_positions=1 << 15)
    return PreparedModel.open(path, 1 << 15)


def test_a_long_prompt_that_fits_is_tokenized_whole(long_context: PreparedModel) -> None:
    text = "The daemon serves models. " * (3 * PIECE_CHARS // 26)  # three pieces' worth
    ids = prompt_ids(long_context, text, None)
    assert ids == long_context.tokenizer.encode(text) and len(ids) < long_context.max_model_len


def test_a_prompt_past_the_context_is_refused_after_a_bounded_part(long_context: PreparedModel) -> None:
    text = ("hello world " * (MAX_PROMPT_CHARS // 12 + 1))[:MAX_PROMPT_CHARS]
    with pytest.raises(InvalidRequest) as info:
        prompt_ids(long_context, text, None)
    counted = int(str(info.value).split("counted in its first ")[1].split()[0])
    assert counted < len(text) // 4 and f"max_model_len is {1 << 15}" in str(info.value)


def test_the_door_parses_large_requests_aside_and_keeps_each_client_s_order() -> None:
    async def main() -> list[tuple[bytes, str]]:
        admitted: list[tuple[bytes, str]] = []
        tasks: list[asyncio.Task[None]] = []

        def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
            tasks.append(asyncio.get_running_loop().create_task(coro, name=name))
            return tasks[-1]

        door = Door(lambda envelope, req: admitted.append((envelope[0], getattr(req, "op", "refused"))), spawn)
        door.enter([b"a"], framing.request(1, "generate", {"model": "m", "prompt": [5] * 100_000}))
        door.enter([b"a"], framing.request(2, "cancel", {"id": 1}))
        door.enter([b"b"], framing.request(3, "ping", {}))
        door.enter([b"b"], framing.request(4, "generate", {"model": "m", "prompt": [-5] * 100_000}))
        assert admitted == [(b"b", "ping")]  # at once; a's cancel waits for its generate
        await asyncio.gather(*tasks)
        door.close()
        return admitted

    order = asyncio.run(main())
    # Each client's requests in the order it sent them; clients' orders are independent.
    assert [op for who, op in order if who == b"a"] == ["generate", "cancel"]
    assert [op for who, op in order if who == b"b"] == ["ping", "refused"]
