"""The daemon's log under systemd: lifecycle events at fitting levels, each line with its
journald priority, so that `journalctl -p warning` shows a worker's death."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import pytest
from mgpud.daemon import journal
from mgpud.daemon.testing import DaemonProcess
from waiting import wait_for


def journal_daemon() -> DaemonProcess:
    """A daemon whose stderr is the stream JOURNAL_STREAM names, as systemd starts it."""
    d = DaemonProcess()
    d.log_path.touch()
    stat = d.log_path.stat()
    d.env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
    return d


def test_a_killed_worker_is_a_warning_and_a_load_information(tiny_llama: Path) -> None:
    with journal_daemon() as d:
        model = d.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=1,
                       kv_cache_memory=2 << 20, max_model_len=256)
        os.kill(model["stats"]["replicas"][0]["pids"][0], signal.SIGKILL)
        wait_for(lambda: d.log().count("tiny replica 0 ready") == 2, "the replica to be restarted", 60,
                 detail=d.log)
        assert d.call("unload", name="tiny")["unloaded"]
        assert d.stop() == 0
        lines = d.log().splitlines()
    assert "<6>INFO mgpud.daemon.events: loading tiny as tp=1 dp=1" in lines
    assert "<6>INFO mgpud.daemon.events: tiny ready as tp=1 dp=1" in lines
    assert any(line.startswith("<4>WARNING mgpud.daemon.events: tiny replica 0 failed: ") for line in lines)
    assert "<6>INFO mgpud.daemon.events: tiny replica 0: restart attempt 1" in lines
    assert "<6>INFO mgpud.daemon.events: tiny unloaded" in lines
    assert any(line.startswith("<7>DEBUG mgpud.daemon.events: tiny replica 0 starting on cpu:0") for line in lines)
    assert lines[-1] == "<6>INFO mgpud.daemon.server: stopped"


def test_every_line_of_a_record_carries_its_priority() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    lines = journal.JournalFormatter(journal.FORMAT).format(record).splitlines()
    assert lines[0] == "<3>ERROR x: failed" and len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert [journal.priority(level) for level in (50, 40, 30, 20, 10, 5)] == [2, 3, 4, 6, 7, 7]


@pytest.mark.parametrize("value", ["", "1:2", "junk"])
def test_a_journal_stream_that_is_not_stderr_does_not_count(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", value)
    assert not journal.under_journald()
