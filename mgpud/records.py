"""The figures that cross process and layer boundaries, declared once.

Rank 0 counts `RankFigures`; a replica adds its identity and memory (`ReplicaFigures`); a
model group sums them (`ModelFigures`); the daemon wraps a group in a `ModelRecord`,
describes each device in a `Device` and itself in a `DaemonSummary`. The engine fills
them, the daemon sends them as maps (`to_wire`), the CLI and the dashboard read them back
(`from_wire`). Field names are the keys of the control protocol's replies
(docs/protocol.md). A leaf module: plain data, importable by every layer without torch
or sockets.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass
class RankFigures:
    """What rank 0 of a replica counts: gauges now, and counters since it started."""

    running: int = 0  # sequences in the batch
    waiting: int = 0  # sequences queued for admission
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    # blocks ever handed out: on a CPU device only these hold resident memory (the rest of
    # the reservation is pages the OS has not given yet)
    kv_blocks_touched: int = 0
    peak_running: int = 0  # the most sequences ever running at once
    # counters: prompts whose first blocks were looked up / found in the prefix cache
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    # counters: sequences preempted (recomputed later), tokens in and out, engine steps
    preemptions: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    steps_total: int = 0
    # seconds in steps, and in the model's forward passes within them (the rest: overhead)
    step_seconds_total: float = 0.0
    forward_seconds_total: float = 0.0
    # MoE: token-to-expert assignments summed over layers (tokens x top-k x MoE layers), and
    # their load balance, vLLM EPLB's mean/max tokens per EP rank (per expert without EP),
    # averaged over layers: 1.0 even, 1/ranks all on one; None for a dense model
    expert_tokens_total: int = 0
    expert_balance: float | None = None

    @property
    def kv_headroom(self) -> float | None:  # fraction of KV blocks free
        return 1.0 - self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else None


# A group's gauges are its replicas' sum.
GAUGES = ("running", "waiting", "kv_blocks_used", "kv_blocks_total", "kv_blocks_touched")
COUNTERS = tuple(f.name for f in dataclasses.fields(RankFigures)
                 if f.name not in GAUGES + ("peak_running", "expert_balance"))


LATENCIES = ("ttft", "tpot", "e2e", "queue")  # time to first token, per output token, end to end, queued
PERCENTILES = (50, 95, 99)


# Throughput over the last seconds, and each latency's percentiles (ms) over recent
# requests (ttft_p50_ms ... queue_p99_ms; None until a request has finished).
RequestFigures = dataclasses.make_dataclass("RequestFigures", [
    ("tokens_per_s_1s", float, 0.0), ("tokens_per_s_10s", float, 0.0),
    ("requests_finished", int, 0), ("requests_failed", int, 0),
    *((f"{name}_p{q}_ms", float | None, None) for name in LATENCIES for q in PERCENTILES)])


@dataclass
class ReplicaFigures(RequestFigures, RankFigures):
    index: int = 0
    state: str = "starting"  # starting, ready, draining, failed, restarting, stopped
    devices: list[str] = field(default_factory=list)
    tp: int = 1
    pids: list[int] = field(default_factory=list)  # one per rank, once loaded
    inflight: int = 0
    error: str | None = None
    num_kv_blocks: int | None = None
    block_size: int | None = None
    dtype: str | None = None
    quantization: str | None = None  # the linear layers' weights when 8-bit: int8, fp8
    kv_cache_dtype: str | None = None  # the KV cache's: the dtype, or fp8
    max_model_len: int | None = None
    kv_bytes_per_rank: int | None = None
    weight_bytes_per_rank: list[int] = field(default_factory=list)
    peak_activation_bytes_per_rank: list[int] = field(default_factory=list)
    graph_bytes_per_rank: list[int] = field(default_factory=list)  # CUDA graphs; 0 when eager


@dataclass
class ModelFigures(RequestFigures, RankFigures):
    """A model group: totals over its replicas (counters include replicas now gone)."""

    name: str = ""
    tp: int = 1
    dp: int = 0
    state: str = "ready"  # ready, degraded, failed, reconfiguring
    max_model_len: int | None = None
    held: int = 0  # requests waiting in the group for a replica of the new shape
    expert_parallel: bool = False  # MoE: whole experts on ranks rather than every expert sharded
    replicas: list[ReplicaFigures] = field(default_factory=list)


@dataclass
class LoadProgress:
    """How far a load or reshape is: bytes and tensors of the weights read, or a message;
    and the seconds each phase of the replica's load took so far (their shares of it)."""

    phase: str  # prepare, start (worker processes), load (weights), profile, kv, ready
    bytes_done: int = 0
    bytes_total: int = 0
    tensors_done: int = 0
    tensors_total: int = 0
    message: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> seconds, for the phases ended

    def shares(self) -> str:
        """ "start 0.4 s (20%) · load 0.3 s (15%) ..."; empty before a phase has ended."""
        total = sum(self.seconds.values())
        return " · ".join(f"{phase} {s:.1f} s ({100 * s / total:.0f}%)" for phase, s in self.seconds.items()
                          ) if total else ""


@dataclass
class DaemonSummary:
    """The daemon itself, as `status`, `metrics` and the telemetry open with."""

    version: str
    protocol: int
    pid: int
    state: str  # starting, loading, running, stopping
    started_at: float  # time.time()
    uptime_s: float
    generations_running: int


@dataclass
class ModelRecord:
    """A model on the daemon, as the `models` operation describes it."""

    name: str
    model: str  # what it was loaded from: a directory, a Hugging Face id, or "demo"
    state: str  # loading, ready, degraded, failed, reconfiguring, unloading
    tp: int
    dp: int
    devices: list[str] = field(default_factory=list)
    error: str | None = None
    progress: LoadProgress | None = None  # while loading or reconfiguring
    reasons: list[str] = field(default_factory=list)  # why this shape, when the planner chose it
    loaded_at: float | None = None  # time.time()
    stats: ModelFigures | None = None  # once the engine group exists
    auto: list[str] = field(default_factory=list)  # which of "tp", "dp" the planner chose (the load gave 0)
    weights: str | None = None  # what the linear layers' weights hold: int8, fp8 or the dtype; once loaded
    kv_cache_dtype: str | None = None  # once loaded
    advice: list[str] = field(default_factory=list)  # the scaling advisor's sentences (mgpud/advice.py)
    tp_degrees: list[int] = field(default_factory=list)  # the tp its heads split into (up to 64); once loaded


@dataclass
class DeviceProcess:
    pid: int
    name: str
    memory: int | None  # bytes; None when the driver does not say (e.g. inside some containers)


@dataclass
class MemorySplit:
    """One device's memory by what holds it (bytes)."""

    weights: int
    kv_allocated: int  # reserved for the KV cache
    kv_used: int  # of it, holding live tokens
    activations: int
    other: int  # beyond the engine's accounting: CUDA context, runtime, other processes
    free: int
    graphs: int = 0  # captured CUDA graphs: their memory pool and static inputs
    kv_touched: int = 0  # of the reservation, blocks ever handed out (resident on a CPU device)


@dataclass
class Device:
    """One device: identity, latest readings (None: unknown, reason in `unavailable`), and
    in the daemon's replies the model, replica and rank on it and its memory split."""

    id: str  # "cuda:0" / "cpu:0": where the engine places tensors
    index: int  # the ordinal in `id`
    kind: str  # "cuda" | "cpu"
    name: str
    uuid: str | None = None
    nvml_index: int | None = None  # NVML's index; differs from `index` under CUDA_VISIBLE_DEVICES
    threads: int | None = None  # CPU devices: torch threads for the worker
    native_bf16: bool | None = None  # CPU devices: bf16 matrix instructions, so dtype auto = bf16
    memory_total: int | None = None  # bytes (CPU: the configured capacity)
    memory_used: int | None = None  # bytes (CPU: RSS of the device's workers)
    memory_free: int | None = None  # bytes
    utilization: float | None = None  # percent
    temperature: float | None = None  # degrees Celsius
    power: float | None = None  # watts
    processes: list[DeviceProcess] = field(default_factory=list)
    error: str | None = None  # why nothing can be read from this device
    unavailable: dict[str, str] = field(default_factory=dict)  # reading -> why it is None
    model: str | None = None
    replica: int | None = None
    rank: int | None = None
    memory: MemorySplit | None = None

    @property
    def available(self) -> bool:
        return self.error is None


def to_wire(record: Any) -> dict[str, Any]:
    """A record as the map the protocol sends. What dataclasses.asdict gives, without its
    deep copy of every leaf: status and telemetry send these several times a second."""
    return {name: _wire(getattr(record, name)) for name in type(record).__dataclass_fields__}


def _wire(value: Any) -> Any:
    if hasattr(type(value), "__dataclass_fields__"):
        return to_wire(value)
    if isinstance(value, list):
        return [_wire(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_wire(v) for v in value)
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    return value


def from_wire(cls: type[R], data: dict[str, Any]) -> R:
    """A record read from a reply, leniently (an older or newer daemon must not break a
    client): keys it does not know are left out; a field the sender left out takes its
    default, or reads as unknown (None, "?" for text) when it has none; a nested record
    missing such a field reads as absent (None, or left out of its list)."""
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name])
        elif _required(f):
            values[f.name] = "?" if hints[f.name] is str else None
    return cls(**values)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _complete(cls: type, data: Any) -> bool:
    return isinstance(data, dict) and all(f.name in data for f in dataclasses.fields(cls) if _required(f))


def _value(hint: Any, value: Any) -> Any:
    """Nested records (possibly optional, or in a list) read from their maps."""
    origin = typing.get_origin(hint)
    if value is None:
        return None
    if origin is list:
        (item,) = typing.get_args(hint)
        if not dataclasses.is_dataclass(item):
            return list(value)
        return [from_wire(item, v) for v in value if _complete(item, v)]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        return from_wire(hint, value) if _complete(hint, value) else None
    return value
