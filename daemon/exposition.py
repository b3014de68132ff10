"""The Prometheus exposition: what the HTTP API serves at GET /metrics and the `metrics`
operation returns with format "prometheus" (`mgpud metrics --prometheus`). One renderer.

Model series mirror vLLM's v1 names with the prefix `mgpud:` instead of `vllm:`, label
`model_name`, so that a vLLM dashboard ports by a prefix rename; a replica's gauges carry
`replica` where vLLM's carry `engine`. The daemon's own counters are `mgpud_daemon_*`.
Device series follow DCGM's field names (`DCGM_FI_DEV_FB_USED` -> `mgpud_dev_fb_used_bytes`),
in bytes. Everything but the request histograms (`histograms.FINISHED`) is read from the
daemon's records at scrape time; a reading the daemon does not have (None) is left out,
not zeroed.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from mgpud.records import Device, ModelRecord, ReplicaFigures

from .handlers import daemon_figures
from .histograms import FINISHED, HISTOGRAMS, Histogram

if TYPE_CHECKING:
    from .server import Daemon

Labels = dict[str, str]
G, C = GaugeMetricFamily, CounterMetricFamily


def render(d: Daemon) -> tuple[bytes, str]:
    """The exposition text and its content type. Call it on the daemon's loop."""
    return generate_latest(registry(d)), CONTENT_TYPE_LATEST


_REGISTRIES: weakref.WeakKeyDictionary[Daemon, CollectorRegistry] = weakref.WeakKeyDictionary()


def registry(d: Daemon) -> CollectorRegistry:
    """The daemon's own registry: what it registers, not what the libraries it imports put
    in prometheus_client's global one. More collectors (HTTP's) may be registered on it."""
    found = _REGISTRIES.get(d)
    if found is None:
        found = _REGISTRIES[d] = CollectorRegistry(auto_describe=False)
        found.register(_Records(d))
        ProcessCollector(registry=found)  # the daemon's CPU time, RSS, open files
    return found


class _Records(Collector):
    def __init__(self, d: Daemon) -> None:
        self._daemon = weakref.ref(d)  # the registry must not keep its daemon alive

    def collect(self) -> Iterable[Metric]:
        d = self._daemon()
        if d is None:
            return []
        out = Families()
        _daemon(out, daemon_figures(d))
        models = d.models.describe_all()
        for m in models:
            _model(out, m)
        _finished(out)
        for row in d.telemetry.device_rows(models):
            _device(out, row)
        return out.families()


class Families:
    """Metric families in the order of their first sample."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def family(self, kind: type[Metric], name: str, help: str, labels: Labels) -> Any:
        if name not in self._families:
            self._families[name] = kind(name, help, labels=list(labels))
        return self._families[name]

    def add(self, kind: type[Metric], name: str, help: str, labels: Labels, value: float | None) -> None:
        """One sample; an unknown value (None) is left out, not zeroed."""
        if value is not None:
            self.family(kind, name, help, labels).add_metric(list(labels.values()), value)

    def histogram(self, name: str, help: str, labels: Labels, h: Histogram) -> None:
        cumulative = accumulate(list(h.counts))  # a copy: bucket and count agree
        buckets = [(floatToGoString(b), n) for b, n in zip((*h.bounds, math.inf), cumulative)]
        self.family(HistogramMetricFamily, name, help, labels).add_metric(list(labels.values()), buckets, h.sum)

    def families(self) -> list[Metric]:
        return list(self._families.values())


def _daemon(out: Families, d: dict[str, Any]) -> None:
    out.add(G, "mgpud_daemon_uptime_seconds", "Seconds since the daemon started.", {}, d["uptime_s"])
    out.add(G, "mgpud_daemon_generations_running", "Generations in progress, all models.", {},
            d["generations_running"])
    for op, n in d["requests_total"].items():
        out.add(C, "mgpud_daemon_requests_total", "Requests received (control socket and HTTP), by operation.",
                {"op": op}, n)
    for code, n in d["errors_total"].items():
        out.add(C, "mgpud_daemon_errors_total", "Error replies sent, by code.", {"code": code}, n)
    out.add(C, "mgpud_daemon_malformed_messages_total", "Messages refused as malformed.", {}, d["malformed_total"])
    out.add(C, "mgpud_daemon_dropped_messages_total", "Replies dropped (client gone or too slow).", {},
            d["dropped_total"])


_MODEL_FIGURES = (  # (series, type, help, field of ModelFigures): a model's totals over its replicas
    ("mgpud:prompt_tokens_total", C, "Prompt tokens processed.", "prompt_tokens_total"),
    ("mgpud:generation_tokens_total", C, "Tokens generated.", "generation_tokens_total"),
    ("mgpud:num_preemptions_total", C, "Sequences preempted for lack of KV cache.", "preemptions"),
    ("mgpud:prefix_cache_queries_total", C, "Prompt blocks looked up in the prefix cache.", "prefix_cache_queries"),
    ("mgpud:prefix_cache_hits_total", C, "Prompt blocks found in the prefix cache.", "prefix_cache_hits"),
    ("mgpud:request_failure_total", C, "Generations that failed.", "requests_failed"),
    ("mgpud:num_requests_held", G, "Requests held in the model's queue while no replica takes them.", "held"),
    ("mgpud:generation_tokens_per_second", G, "Tokens generated per second over the last 10 s.",
     "tokens_per_s_10s"),
    ("mgpud:expert_tokens_total", C, "MoE token-to-expert assignments, summed over layers.", "expert_tokens_total"),
    ("mgpud:expert_balance", G, ("MoE load balance: mean/max tokens per EP rank (per expert without EP), "
                                 "1 = even."), "expert_balance"),
)
_REPLICA_FIGURES = (  # (series, help, field of ReplicaFigures)
    ("mgpud:num_requests_running", "Requests in the replica's running batch.", "running"),
    ("mgpud:num_requests_waiting", "Requests waiting for the replica's scheduler.", "waiting"),
    ("mgpud:kv_cache_blocks_used", "KV cache blocks holding tokens.", "kv_blocks_used"),
    ("mgpud:kv_cache_blocks_total", "KV cache blocks allocated.", "kv_blocks_total"),
)


def _model(out: Families, m: ModelRecord) -> None:
    labels = {"model_name": m.name}
    out.add(G, "mgpud:model_info", "1 per model; its shape and state in the labels.",
            {**labels, "tp": str(m.tp), "dp": str(m.dp), "state": m.state}, 1)
    if m.stats is None:  # loading: no engine group yet
        return
    out.add(G, "mgpud:num_replicas_ready", "Replicas serving.", labels,
            sum(r.state == "ready" for r in m.stats.replicas))
    for series, kind, help, key in _MODEL_FIGURES:
        out.add(kind, series, help, labels, getattr(m.stats, key))
    for replica in m.stats.replicas:
        _replica(out, m.name, replica)


def _replica(out: Families, model: str, r: ReplicaFigures) -> None:
    labels = {"model_name": model, "replica": str(r.index)}
    for series, help, key in _REPLICA_FIGURES:
        out.add(G, series, help, labels, getattr(r, key))
    out.add(G, "mgpud:kv_cache_usage_perc", "KV cache usage, 1 = full.", labels,
            r.kv_blocks_used / r.kv_blocks_total if r.kv_blocks_total else None)


def _finished(out: Families) -> None:
    for model, requests in list(FINISHED.items()):
        labels = {"model_name": model}
        for reason, n in list(requests.finished.items()):
            out.add(C, "mgpud:request_success_total", "Generations finished, by finish reason.",
                    {**labels, "finished_reason": reason}, n)
        for name, histogram in requests.histograms.items():
            out.histogram(name, HISTOGRAMS[name].help, labels, histogram)


DEVICE_READINGS = (  # (series, help, field of Device)
    ("mgpud_dev_fb_total_bytes", "Device memory capacity.", "memory_total"),
    ("mgpud_dev_fb_used_bytes", "Device memory in use (CPU devices: the workers' RSS).", "memory_used"),
    ("mgpud_dev_fb_free_bytes", "Device memory free.", "memory_free"),
    ("mgpud_dev_gpu_util", "Utilization, percent.", "utilization"),
    ("mgpud_dev_gpu_temp", "Temperature, degrees Celsius.", "temperature"),
    ("mgpud_dev_power_usage", "Power draw, watts.", "power"),
)
MEMORY_SPLIT = (("weights", "weights"), ("kv_cache", "kv_allocated"), ("activations", "activations"),
                ("cuda_graphs", "graphs"), ("other", "other"), ("free", "free"))  # (label `use`, field of MemorySplit)


def _device(out: Families, d: Device) -> None:
    labels = {"gpu": str(d.index), "UUID": d.uuid or "", "device": d.id, "device_name": d.name,
              "model_name": d.model or "", "replica": "" if d.replica is None else str(d.replica)}
    for series, help, key in DEVICE_READINGS:
        out.add(G, series, help, labels, getattr(d, key))
    if d.memory is None:  # no reading of the memory in use
        return
    for use, key in MEMORY_SPLIT:
        out.add(G, "mgpud_dev_memory_bytes", "Device memory by use; the uses sum to the capacity.",
                {**labels, "use": use}, getattr(d.memory, key))
    out.add(G, "mgpud_dev_kv_cache_used_bytes", "Of the KV cache, bytes holding tokens.", labels, d.memory.kv_used)
