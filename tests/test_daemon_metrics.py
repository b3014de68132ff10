"""The Prometheus exposition (`metrics` with format "prometheus", `mgpud metrics
--prometheus`) of a real daemon serving a tiny model as two replicas; and the request
histograms on their own."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from mgpud.cli.main import cli
from mgpud.daemon import histograms
from mgpud.daemon.exposition import DEVICE_READINGS, MEMORY_SPLIT
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import RemoteError
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

LIMITS = {"kv_cache_memory": 2 << 20, "max_model_len": 256}
PROMPTS = ["The daemon serves", [5, 6, 7, 8, 9], "What is the capital of France?"]
MAX_TOKENS = 6
GENERATED = len(PROMPTS) * MAX_TOKENS
TINY = {"model_name": "tiny"}


@pytest.fixture(scope="module")
def daemon(tiny_llama: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(http="127.0.0.1:0") as d:
        with d.client(timeout=60) as c:
            c.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=2, **LIMITS)
        yield d


@pytest.fixture(scope="module")
def results(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The generations every test here sees counted, and one error reply."""
    with daemon.client(timeout=60) as c:
        done = [c.call("generate", model="tiny", prompt=p, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
        with pytest.raises(RemoteError):
            c.call("generate", model="nosuch", prompt="x")
    # The replicas report their counters apart from the tokens: wait until they have.
    wait_for(lambda: daemon.call("models")["models"][0]["stats"]["generation_tokens_total"] == GENERATED,
             "the replicas' token counts", 30)
    return done


def scrape(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], family: str, sample: str, **labels: str) -> float | None:
    """The sample named `sample` of `family` whose labels include `labels`; None if absent."""
    samples = families[family].samples if family in families else []
    found = [s.value for s in samples if s.name == sample and labels.items() <= s.labels.items()]
    assert len(found) <= 1, (family, sample, labels, found)
    return found[0] if found else None


@pytest.fixture(scope="module")
def exposition(daemon: DaemonProcess, results: list[dict[str, Any]]) -> dict[str, Metric]:
    reply = daemon.call("metrics", format="prometheus")
    assert reply["content_type"].startswith("text/plain")
    return scrape(reply["text"])


def test_histograms_count_each_finished_generation(exposition: dict[str, Metric],
                                                   results: list[dict[str, Any]]) -> None:
    runs = len(PROMPTS)
    for name in histograms.HISTOGRAMS:
        count = value(exposition, name, f"{name}_count", **TINY)
        assert count == (runs * (MAX_TOKENS - 1) if name == histograms.ITL else runs), name
        assert value(exposition, name, f"{name}_bucket", le="+Inf", **TINY) == count
    prompt_tokens = sum(r["usage"]["prompt_tokens"] for r in results)
    assert value(exposition, "mgpud:request_prompt_tokens", "mgpud:request_prompt_tokens_sum", **TINY) == prompt_tokens
    generated = value(exposition, "mgpud:request_generation_tokens", "mgpud:request_generation_tokens_sum", **TINY)
    assert generated == GENERATED
    e2e = value(exposition, "mgpud:e2e_request_latency_seconds", "mgpud:e2e_request_latency_seconds_sum", **TINY)
    assert e2e == pytest.approx(sum(r["timings"]["total_ms"] for r in results) / 1000, abs=1e-4)
    success = value(exposition, "mgpud:request_success", "mgpud:request_success_total", finished_reason="length")
    assert success == runs


def test_model_replica_and_daemon_series(exposition: dict[str, Metric]) -> None:
    for replica in ("0", "1"):
        labels = {**TINY, "replica": replica}
        assert value(exposition, "mgpud:num_requests_running", "mgpud:num_requests_running", **labels) == 0
        assert value(exposition, "mgpud:num_requests_waiting", "mgpud:num_requests_waiting", **labels) == 0
        assert 0 <= value(exposition, "mgpud:kv_cache_usage_perc", "mgpud:kv_cache_usage_perc", **labels) <= 1
    generated = value(exposition, "mgpud:generation_tokens", "mgpud:generation_tokens_total", **TINY)
    assert generated == GENERATED
    assert value(exposition, "mgpud:model_info", "mgpud:model_info", **TINY, tp="1", dp="2", state="ready") == 1
    assert value(exposition, "mgpud_daemon_requests", "mgpud_daemon_requests_total", op="generate") == 4
    assert value(exposition, "mgpud_daemon_errors", "mgpud_daemon_errors_total", code="not_found") == 1


def test_devices_show_their_readings_and_leave_unknown_ones_out(daemon: DaemonProcess) -> None:
    before = daemon.call("devices")["devices"]
    families = scrape(daemon.call("metrics", format="prometheus")["text"])
    after = daemon.call("devices")["devices"]
    unknown = [(row["id"], series) for row in after for series, _, key in DEVICE_READINGS if row[key] is None]
    assert unknown  # CPU devices have no temperature: something must be left out
    for row, later in zip(before, after):
        for series, _, key in DEVICE_READINGS:
            known = row[key] is not None
            if known == (later[key] is not None):  # not one that came (CPU load needs two samples) meanwhile
                assert (value(families, series, series, device=row["id"]) is not None) == known, (row["id"], series)
        split = [value(families, "mgpud_dev_memory_bytes", "mgpud_dev_memory_bytes", device=row["id"], use=use)
                 for use, _ in MEMORY_SPLIT]
        assert sum(split) == row["memory_total"]
        assert value(families, "mgpud_dev_memory_bytes", "mgpud_dev_memory_bytes",
                     device=row["id"], model_name="tiny", use="weights") > 0


def test_the_cli_prints_the_daemons_exposition(daemon: DaemonProcess, exposition: dict[str, Metric]) -> None:
    runner = CliRunner()
    text = runner.invoke(cli, ["--runtime-dir", str(daemon.runtime_dir), "metrics", "--prometheus"])
    assert text.exit_code == 0, text.output
    assert scrape(text.stdout).keys() == exposition.keys()
    data = json.loads(runner.invoke(cli, ["--runtime-dir", str(daemon.runtime_dir), "metrics", "--json"]).stdout)
    assert data["models"]["tiny"]["stats"]["generation_tokens_total"] == GENERATED
    with pytest.raises(RemoteError, match="must be one of json, prometheus"):
        daemon.call("metrics", format="text")


def test_http_serves_the_same_exposition(daemon: DaemonProcess, exposition: dict[str, Metric]) -> None:
    with urllib.request.urlopen(daemon.http_url + "/metrics", timeout=10) as reply:
        assert reply.headers["content-type"] == daemon.call("metrics", format="prometheus")["content_type"]
        assert scrape(reply.read().decode()).keys() == exposition.keys()


def _output(reason: str, **times: float | None) -> SimpleNamespace:
    stamps = {"arrival_time": 10.0, "first_scheduled_time": 10.5, "first_token_time": 11.0, "finished_time": 13.0}
    return SimpleNamespace(finish_reason=reason, prompt_tokens=5, completion_tokens=3, **{**stamps, **times})


def test_histograms_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(histograms, "FINISHED", {})
    assert histograms.one_two_five(100) == (1, 2, 5, 10, 20, 50, 100)
    histograms.observe("m", _output("stop"), [11.0, 11.5, 13.0])
    histograms.observe("m", _output("cancelled", first_scheduled_time=None, first_token_time=None), [])
    histograms.observe("m", _output("replica_failed"), [11.0])  # an error reply: counted there
    m = histograms.FINISHED["m"]
    assert m.finished == {"stop": 1, "cancelled": 1}
    ttft = m.histograms["mgpud:time_to_first_token_seconds"]
    assert sum(ttft.counts) == 1 and ttft.counts[ttft.bounds.index(1.0)] == 1  # 1.0 s falls in le="1.0"
    assert m.histograms["mgpud:e2e_request_latency_seconds"].sum == 6.0
    assert m.histograms["mgpud:request_time_per_output_token_seconds"].sum == 1.0  # (13 - 11) / (3 - 1)
    gaps = m.histograms[histograms.ITL]
    assert (sum(gaps.counts), gaps.sum) == (2, 2.0)
