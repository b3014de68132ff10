"""A control-socket client that goes away takes its generations with it: the daemon
cancels them and frees their KV cache instead of generating for nobody."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from checkpoints import make_tiny_checkpoint
from mgpud.daemon.testing import DaemonProcess
from waiting import wait_for

LONG = 2000  # tokens: far more than the tiny model makes before the client is gone

BLOCKING = """
import sys
from mgpud.ipc import Client
with Client(sys.argv[1], timeout=60) as c:
    c.call("generate", model="tiny", prompt="Once", max_tokens=int(sys.argv[2]), ignore_eos=True, stream=False)
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    model = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama", max_positions=4096)
    with DaemonProcess() as d:
        d.call("load", model=str(model), name="tiny", max_model_len=LONG + 64, kv_cache_memory=8 << 20)
        yield d


def _stats(daemon: DaemonProcess) -> dict[str, Any]:
    return daemon.call("models")["models"][0]["stats"]


def _gone_and_freed(daemon: DaemonProcess, client: subprocess.Popen[bytes], how: signal.Signals) -> None:
    wait_for(lambda: _stats(daemon)["running"] == 1, "the generation to run", detail=daemon.log)
    client.send_signal(how)
    client.wait(30)
    wait_for(lambda: _stats(daemon)["running"] == 0 and _stats(daemon)["kv_blocks_used"] == 0,
             "the generation to be cancelled and its KV freed", 10, detail=lambda: _stats(daemon))


def test_a_killed_blocking_client_cancels_its_generation(daemon: DaemonProcess) -> None:
    client = subprocess.Popen([sys.executable, "-c", BLOCKING, str(daemon.runtime_dir), str(LONG)])
    _gone_and_freed(daemon, client, signal.SIGKILL)
    assert daemon.call("ping")["pong"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGHUP])
def test_a_cli_stopped_by_a_signal_cancels_its_generation(daemon: DaemonProcess, how: signal.Signals) -> None:
    client = subprocess.Popen([sys.executable, "-m", "mgpud.cli", "--runtime-dir", str(daemon.runtime_dir),
                               "generate", "tiny", "Once", "--max-tokens", str(LONG), "--ignore-eos"],
                              stdout=subprocess.DEVNULL)
    _gone_and_freed(daemon, client, how)
