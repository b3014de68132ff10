"""What the dashboard shows, read from the daemon's telemetry (docs/protocol.md).

Parsing is lenient: a field a daemon does not send (an older or newer version) shows as
unknown rather than breaking the screen. The throughput history lives here too, filled
by the telemetry worker, so that snapshots the screen skips (they coalesce) still count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HISTORY_SAMPLES = 600  # telemetry arrives about twice a second: five minutes


@dataclass(frozen=True)
class MemorySplit:
    """One device's memory, in bytes, as the bar shows it."""

    weights: int
    kv_used: int
    kv_reserved: int  # allocated for the KV cache, not holding tokens now
    activations: int
    other: int  # beyond the engine's accounting: runtime, other processes
    free: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_used + self.kv_reserved + self.activations + self.other + self.free


@dataclass(frozen=True)
class DeviceView:
    id: str
    name: str
    memory_total: int | None  # bytes
    split: MemorySplit | None
    utilization: float | None  # percent
    temperature: float | None  # degrees Celsius
    power: float | None  # watts
    model: str | None
    rank: int | None
    replica: int | None
    error: str | None


@dataclass(frozen=True)
class ReplicaView:
    index: int
    state: str
    tp: int
    devices: tuple[str, ...]
    running: int | None
    waiting: int | None
    kv_headroom: float | None  # fraction of KV blocks free
    tokens_per_s: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    error: str | None


@dataclass(frozen=True)
class ModelView:
    name: str
    source: str  # the model directory, or "demo"
    state: str
    tp: int
    dp: int
    devices: tuple[str, ...]
    progress: float | None  # 0-1 while loading
    error: str | None
    running: int | None
    waiting: int | None
    kv_headroom: float | None
    tokens_per_s: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    max_model_len: int | None
    pids: tuple[int, ...]
    replicas: tuple[ReplicaView, ...]


@dataclass(frozen=True)
class DaemonView:
    version: str
    state: str  # starting, loading, running, stopping
    pid: int | None
    uptime_s: float | None
    generations_running: int | None


@dataclass(frozen=True)
class Series:
    tokens_per_s: tuple[float, ...]
    ttft_p95_ms: tuple[float, ...]


@dataclass(frozen=True)
class Snapshot:
    daemon: DaemonView
    devices: tuple[DeviceView, ...]
    models: tuple[ModelView, ...]
    history: Mapping[str, Series] = field(default_factory=dict)

    def model(self, name: str) -> ModelView | None:
        return next((m for m in self.models if m.name == name), None)


class History:
    """Per model, the last HISTORY_SAMPLES readings of tokens/s and TTFT p95."""

    def __init__(self) -> None:
        self._tokens: dict[str, deque[float]] = {}
        self._ttft: dict[str, deque[float]] = {}

    def record(self, models: tuple[ModelView, ...]) -> dict[str, Series]:
        names = {m.name for m in models}
        for gone in set(self._tokens) - names:
            del self._tokens[gone], self._ttft[gone]
        for m in models:
            self._tokens.setdefault(m.name, deque(maxlen=HISTORY_SAMPLES)).append(m.tokens_per_s or 0.0)
            self._ttft.setdefault(m.name, deque(maxlen=HISTORY_SAMPLES)).append(m.ttft_p95_ms or 0.0)
        return {n: Series(tuple(self._tokens[n]), tuple(self._ttft[n])) for n in names}


def parse_snapshot(data: Mapping[str, Any], history: History) -> Snapshot:
    """A telemetry message's data -> Snapshot; raises ValueError when it is not one."""
    try:
        models = tuple(_model(m) for m in data.get("models") or ())
        return Snapshot(daemon=_daemon(data.get("daemon") or {}),
                        devices=tuple(_device(d) for d in data.get("devices") or ()),
                        models=models, history=history.record(models))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable telemetry: {type(exc).__name__}: {exc}") from None


def _daemon(d: Mapping[str, Any]) -> DaemonView:
    return DaemonView(version=str(d.get("version", "?")), state=str(d.get("state", "?")),
                      pid=d.get("pid"), uptime_s=d.get("uptime_s"),
                      generations_running=d.get("generations_running"))


def _device(d: Mapping[str, Any]) -> DeviceView:
    mem = d.get("memory")
    split = None
    if mem:
        kv_used = mem.get("kv_used", 0)
        split = MemorySplit(weights=mem.get("weights", 0), kv_used=kv_used,
                            kv_reserved=max(0, mem.get("kv_allocated", 0) - kv_used),
                            activations=mem.get("activations", 0), other=mem.get("other", 0),
                            free=mem.get("free", 0))
    return DeviceView(id=str(d["id"]), name=str(d.get("name") or d["id"]),
                      memory_total=d.get("memory_total"), split=split,
                      utilization=d.get("utilization"), temperature=d.get("temperature"),
                      power=d.get("power"), model=d.get("model"), rank=d.get("rank"),
                      replica=d.get("replica"), error=d.get("error"))


def _headroom(stats: Mapping[str, Any]) -> float | None:
    total = stats.get("kv_blocks_total")
    if not total:
        return None
    return 1.0 - (stats.get("kv_blocks_used") or 0) / total


def _rate(figures: Mapping[str, Any]) -> float | None:
    # Model figures say tokens_per_s; the engine's replica figures tokens_per_s_10s.
    value = figures.get("tokens_per_s")
    return figures.get("tokens_per_s_10s") if value is None else value


def _replica(r: Mapping[str, Any]) -> ReplicaView:
    return ReplicaView(index=int(r.get("index", 0)), state=str(r.get("state", "?")),
                       tp=int(r.get("tp") or len(r.get("devices") or ()) or 1),
                       devices=tuple(r.get("devices") or ()), running=r.get("running"),
                       waiting=r.get("waiting"), kv_headroom=_headroom(r), tokens_per_s=_rate(r),
                       ttft_p50_ms=r.get("ttft_p50_ms"), ttft_p95_ms=r.get("ttft_p95_ms"),
                       error=r.get("error"))


def _progress(p: Mapping[str, Any] | None) -> float | None:
    total = (p or {}).get("bytes_total")
    return min(1.0, (p.get("bytes_done") or 0) / total) if p and total else None


def _model(m: Mapping[str, Any]) -> ModelView:
    stats = m.get("stats") or {}
    figures = m.get("figures") or {}
    info = m.get("info") or {}
    state = str(m.get("state", "?"))
    replicas = stats.get("replicas") or ()
    pids = m.get("pids") or [pid for r in replicas for pid in r.get("pids") or ()]
    return ModelView(
        name=str(m["name"]), source=str(m.get("model", "")), state=state,
        tp=int(m.get("tp") or 0), dp=int(m.get("dp") or 0), devices=tuple(m.get("devices") or ()),
        progress=_progress(m.get("progress")) if state == "loading" else None,
        error=m.get("error"),
        running=stats.get("running", figures.get("running")), waiting=stats.get("waiting"),
        kv_headroom=_headroom(stats), tokens_per_s=_rate(figures) if figures else _rate(stats),
        ttft_p50_ms=figures.get("ttft_p50_ms", stats.get("ttft_p50_ms")),
        ttft_p95_ms=figures.get("ttft_p95_ms", stats.get("ttft_p95_ms")),
        max_model_len=info.get("max_model_len") or stats.get("max_model_len"),
        pids=tuple(pids),
        replicas=tuple(_replica(r) for r in replicas),
    )
