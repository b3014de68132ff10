"""What the dashboard shows: the daemon's telemetry (docs/protocol.md) read into the
records of mgpud.records, and what the panels derive from them (a loading model's
progress, its worker PIDs, the throughput history for the charts).

Parsing is lenient: a field a daemon does not send (an older or newer version) shows as
unknown rather than breaking the screen. The throughput history (mgpud/advice.py History)
is filled by the telemetry worker, so that snapshots the screen skips (they coalesce) still count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mgpud.advice import History, Series
from mgpud.records import DaemonSummary, Device, ModelRecord, from_wire

HISTORY_SAMPLES = 600  # the charts' width: telemetry arrives about twice a second, five minutes
R = TypeVar("R")


@dataclass(frozen=True)
class Snapshot:
    daemon: DaemonSummary
    devices: tuple[Device, ...]
    models: tuple[ModelRecord, ...]
    history: Mapping[str, Series] = field(default_factory=dict)

    def model(self, name: str) -> ModelRecord | None:
        return next((m for m in self.models if m.name == name), None)


def load_fraction(m: ModelRecord) -> float | None:
    """How much of a loading model's weights are read (0-1); None when unknown or not loading."""
    p = m.progress
    if m.state != "loading" or p is None or not p.bytes_total:
        return None
    return min(1.0, p.bytes_done / p.bytes_total)


def load_phase(m: ModelRecord) -> str | None:
    """Where a loading model is: its phase and, while weights are read, the percent done
    ("load 45%", "profile"); None when it is not loading or has said nothing yet."""
    if m.state != "loading" or m.progress is None:
        return None
    fraction = load_fraction(m)
    return m.progress.phase if fraction is None else f"{m.progress.phase} {fraction:.0%}"


def pids(m: ModelRecord) -> tuple[int, ...]:
    """The model's worker processes, replica by replica."""
    return tuple(pid for r in (m.stats.replicas if m.stats else ()) for pid in r.pids)


def parse_snapshot(data: Mapping[str, Any], history: History) -> Snapshot:
    """A telemetry message's data -> Snapshot; raises ValueError when it is not one."""
    try:
        models = tuple(_read(ModelRecord, m, "name") for m in data.get("models") or ())
        return Snapshot(daemon=_read(DaemonSummary, data.get("daemon") or {}),
                        devices=tuple(_read(Device, d, "id") for d in data.get("devices") or ()),
                        models=models, history=history.record(models))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable telemetry: {type(exc).__name__}: {exc}") from None


def _read(cls: type[R], data: Any, key: str | None = None) -> R:
    """`data` read into `cls` (leniently: see from_wire); `key`, what names the record,
    must be there: without it the map is not this record at all."""
    if not isinstance(data, Mapping) or (key is not None and key not in data):
        raise ValueError(f"not a {cls.__name__}: {data!r:.80}")
    return from_wire(cls, dict(data))
