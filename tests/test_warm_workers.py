"""The daemon's warm workers: a replica starts on a process that has already imported
torch and the engine, and the pool refills behind it, as `status` shows. (That outputs
are unchanged on them: tests/test_daemon_models.py compares the daemon's, started on
warm workers, with the engine's own.)"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from mgpud.cli.status import format_status
from mgpud.daemon.settings import ConfigError, load_config
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import Client
from waiting import wait_for

LIMITS = {"kv_cache_memory": 2 << 20, "max_model_len": 256}


def _pool_ready(c: Client, ready: int) -> dict[str, int]:
    return wait_for(lambda: (pool := c.call("status")["warm_workers"])["ready"] == ready and pool,
                    f"{ready} warm worker(s) in status", 60)


def test_replica_starts_on_a_warm_worker_and_the_pool_refills(tiny_llama: Path) -> None:
    with DaemonProcess("--warm-workers", "1") as d, d.client(timeout=60) as c:
        assert _pool_ready(c, 1) == {"ready": 1, "starting": 0, "target": 1}
        assert "1 warm, 0 starting (keeps 1)" in format_status(c.call("status"))
        c.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=1, **LIMITS)
        (pid,) = c.call("models")["models"][0]["stats"]["replicas"][0]["pids"]
        assert "warm_main" in " ".join(psutil.Process(pid).cmdline())
        assert psutil.Process(pid).ppid() == d.proc.pid  # it dies with the daemon, as every rank does
        result = c.call("generate", model="tiny", prompt=[5, 6, 7], max_tokens=4, ignore_eos=True)
        assert len(result["token_ids"]) == 4
        _pool_ready(c, 1)


def test_warm_workers_setting_is_checked(tmp_path: Path) -> None:
    file = tmp_path / "mgpud.toml"
    file.write_text("warm_workers = 3\n")
    assert load_config(file).warm_workers == 3
    assert load_config(file, {"warm_workers": 0}).warm_workers == 0  # a flag overrides the file
    for bad in ("-1", "1.5", "true"):
        file.write_text(f"warm_workers = {bad}\n")
        with pytest.raises(ConfigError, match="warm_workers: must be a whole number >= 0"):
            load_config(file)
