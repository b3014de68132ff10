"""The scaling advisor: from the figures the daemon already keeps, when to change a model's
shape or the hardware, and the `mgpud scale` command that does it. Pure functions of a
model, its history and the devices, so that synthetic series test every rule. A leaf (no
torch, no sockets): the daemon samples the history and advises; `status`, `ps` and the
dashboard show what it said. The dashboard keeps a History too, for its charts."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from statistics import fmean

from mgpud.records import Device, ModelFigures, ModelRecord, ReplicaFigures

WINDOW_S = 120.0  # seconds of history compared: the last two minutes
RISE = 1.5  # TTFT p95 counts as rising at this many times its level of the window's first half
FLAT = 0.15  # tokens/s counts as flat within this share of its earlier level
SPARE = 0.2  # memory counts as headroom at this share of a device free
KV_SHORT = 0.1  # KV headroom below this, with requests waiting, is too little room
Figures = ModelFigures | ReplicaFigures


def tokens_per_s(figures: Figures | None) -> float | None:
    # The last 10 s rather than the last second: steadier to read, and what `mgpud ps` shows.
    return None if figures is None else figures.tokens_per_s_10s


def ttft_p95_ms(figures: Figures | None) -> float | None:
    return None if figures is None else figures.ttft_p95_ms


@dataclass(frozen=True)
class Series:
    """One model's figures, oldest first: when each sample was taken (time.monotonic()),
    its tokens/s and its TTFT p95."""

    times: tuple[float, ...] = ()
    tokens_per_s: tuple[float, ...] = ()
    ttft_p95_ms: tuple[float, ...] = ()


class History:
    """Per model, the last `samples` readings of tokens/s and TTFT p95; a model gone is forgotten."""

    def __init__(self, samples: int) -> None:
        self._samples: dict[str, deque[tuple[float, float, float]]] = {}
        self.samples = samples

    @classmethod
    def for_advice(cls, interval_s: float) -> History:
        """Enough samples taken `interval_s` apart to span the advisor's window, and two to spare."""
        return cls(math.ceil(WINDOW_S / interval_s) + 2)

    def record(self, models: tuple[ModelRecord, ...] | list[ModelRecord]) -> dict[str, Series]:
        now = time.monotonic()
        names = {m.name for m in models}
        for gone in set(self._samples) - names:
            del self._samples[gone]
        for m in models:
            sample = (now, tokens_per_s(m.stats) or 0.0, ttft_p95_ms(m.stats) or 0.0)
            self._samples.setdefault(m.name, deque(maxlen=self.samples)).append(sample)
        return {n: Series(*map(tuple, zip(*self._samples[n], strict=True))) for n in names}


def advise(model: ModelRecord, series: Series, devices: tuple[Device, ...]) -> list[str]:
    """What to do about `model` now, one sentence per rule that holds, each ending with the
    `mgpud scale` command to run where one would help."""
    return [text for rule in (_upgrade, _kv_room, _idle_replica) if (text := rule(model, series, devices))]


def _upgrade(model: ModelRecord, series: Series, devices: tuple[Device, ...]) -> str | None:
    """TTFT p95 rising while tokens/s stays flat with memory to spare: more requests than the
    compute serves, and memory is not what limits: more replicas, or faster devices."""
    if not series.times or series.times[-1] - series.times[0] < WINDOW_S or model.state != "ready":
        return None  # too short a history to tell
    ttft_before, ttft_now = _halves(series.times, series.ttft_p95_ms)
    tps_before, tps_now = _halves(series.times, series.tokens_per_s)
    rising = ttft_before > 0 and ttft_now >= RISE * ttft_before
    flat = tps_before > 0 and abs(tps_now - tps_before) <= FLAT * tps_before
    if not (rising and flat and _memory_spare(model, devices)):
        return None
    head = (f"{model.name}: TTFT p95 rose {ttft_now / ttft_before:.1f}x in {WINDOW_S / 60:g} min while tokens/s "
            f"stayed at ~{tps_now:.0f} with memory to spare: compute-bound, time to upgrade")
    free = sum(1 for d in devices if d.model is None and d.available)
    if free >= model.tp:
        return f"{head}: add a replica: mgpud scale {model.name} --dp {model.dp + 1}"
    return f"{head}: more or faster devices (none is free for another replica)"


def _kv_room(model: ModelRecord, series: Series, devices: tuple[Device, ...]) -> str | None:
    """The KV cache nearly full while requests wait: they wait for room, not for compute."""
    stats = model.stats
    if stats is None or stats.kv_headroom is None or stats.kv_headroom >= KV_SHORT or not stats.waiting:
        return None
    head = f"{model.name}: KV cache {1 - stats.kv_headroom:.0%} full with {stats.waiting} waiting: give it more KV room"
    if (tp := _wider_tp(model, model.dp, devices)) is not None:
        return f"{head}: mgpud scale {model.name} --tp {tp} (or a shorter max_model_len)"
    return f"{head}: load it again with a larger --kv-cache-memory or a shorter --max-model-len"


def _idle_replica(model: ModelRecord, series: Series, devices: tuple[Device, ...]) -> str | None:
    """A replica with nothing to do while another queues: the routing or the shape is off."""
    replicas = model.stats.replicas if model.stats else []
    idle = [r for r in replicas if r.state == "ready" and not r.running and not r.waiting]
    queued = [r for r in replicas if r.waiting]
    if not (idle and queued):
        return None
    head = (f"{model.name}: replica {idle[0].index} idle while replica {queued[0].index} queues "
            f"{queued[0].waiting}: check the routing")
    dp = max(1, model.dp // 2)
    if (tp := _wider_tp(model, dp, devices)) is not None:
        return f"{head}, or fewer wider replicas: mgpud scale {model.name} --tp {tp} --dp {dp}"
    return head


def _wider_tp(model: ModelRecord, dp: int, devices: tuple[Device, ...]) -> int | None:
    """The next tp the model's heads split into that `dp` replicas can have on its own
    devices and the free ones; None when there is none."""
    usable = sum(1 for d in devices if d.id in model.devices or (d.model is None and d.available))
    return next((tp for tp in model.tp_degrees if tp > model.tp and tp * dp <= usable), None)


def _halves(times: tuple[float, ...], values: tuple[float, ...]) -> tuple[float, float]:
    """The mean of the window's first half and of its second (the history spans the window)."""
    start, middle = times[-1] - WINDOW_S, times[-1] - WINDOW_S / 2
    before = [v for t, v in zip(times, values, strict=True) if start <= t < middle]
    return fmean(before), fmean(v for t, v in zip(times, values, strict=True) if t >= middle)


def _memory_spare(model: ModelRecord, devices: tuple[Device, ...]) -> bool:
    """Whether the model's devices (or free ones) have at least SPARE of their memory free."""
    mine = [d for d in devices if d.id in model.devices or d.model is None]
    return any(d.memory_total and (free := _free(d)) is not None and free >= SPARE * d.memory_total for d in mine)


def _free(d: Device) -> int | None:
    """Free bytes: the daemon's split of the device where it has one, else the reading."""
    return d.memory.free if d.memory is not None else d.memory_free
