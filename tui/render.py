"""Figures and bars as short Rich texts.

Every bar is drawn with a distinct glyph per segment as well as a colour, so that it still
reads on a monochrome terminal or with NO_COLOR set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rich.text import Text

from mgpud.records import MemorySplit
from mgpud.units import fmt_bytes

NONE = "–"  # a figure the daemon does not know (yet)


def kv_reserved(m: MemorySplit) -> int:
    """Bytes of the KV cache that hold no tokens now: the bar shows them apart from those
    in use, so that one sees how full the cache is, not only how large."""
    return max(0, m.kv_allocated - m.kv_used)


# The memory bar's parts: (glyph, colour, label, short label, its bytes in the device's split)
MEMORY_SEGMENTS: tuple[tuple[str, str, str, str, Callable[[MemorySplit], int]], ...] = (
    ("█", "dodger_blue2", "weights", "weights", lambda m: m.weights),
    ("▓", "magenta", "KV in use", "KV used", lambda m: m.kv_used),
    ("▒", "orchid", "KV reserved, not in use yet", "KV res", kv_reserved),
    ("░", "yellow", "activations (peak, measured at load)", "act", lambda m: m.activations + m.graphs),
    ("▚", "red", "other: runtime, other processes", "other", lambda m: m.other),
    ("·", "grey50", "free", "free", lambda m: m.free),
)


def size(n: int | None) -> str:
    """Bytes in binary units, three significant figures at most: 512B, 1.5K, 340M, 2.8G."""
    return fmt_bytes(n, compact=True, missing=NONE)


def clip(text: str | None, width: int) -> str:
    """`text` cut to `width` characters, an ellipsis marking the cut."""
    text = text or ""
    return text if len(text) <= width else text[:width - 1] + "…"


def count(n: int | None) -> str:
    return NONE if n is None else str(n)


def rate(tokens_per_s: float | None) -> str:
    return NONE if tokens_per_s is None else f"{tokens_per_s:.1f}"


def millis(ms: float | None) -> str:
    if ms is None:
        return NONE
    return f"{ms / 1000:.1f}s" if ms >= 10_000 else f"{ms:.0f}"


def percent(value: float | None, unit: str = "%") -> str:
    return NONE if value is None else f"{value:.0f}{unit}"


def duration(seconds: float | None) -> str:
    """An uptime: 42s, 5m03s, 1h02m, 3d04h."""
    if seconds is None:
        return NONE
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def _cells(values: list[int], width: int) -> list[int]:
    """Split `width` cells in proportion to `values`; a non-zero value gets at least one
    cell when there is room, so that a small KV cache next to large weights still shows."""
    total = sum(values)
    if total <= 0 or width <= 0:
        return [0] * len(values)
    cells = [v * width // total for v in values]
    visible = sum(1 for v in values if v > 0)
    if visible <= width:
        cells = [max(c, 1) if v > 0 else c for c, v in zip(cells, values, strict=True)]
    # Settle rounding on the biggest segment, where a cell more or less matters least.
    biggest = max(range(len(values)), key=lambda i: cells[i])
    cells[biggest] += width - sum(cells)
    return cells


def memory_bar(memory: MemorySplit | None, width: int) -> Text:
    if memory is None:
        return Text("?" * width, style="grey50")
    values = [part(memory) for *_, part in MEMORY_SEGMENTS]
    bar = Text()
    for (glyph, colour, *_), n in zip(MEMORY_SEGMENTS, _cells(values, width), strict=True):
        bar.append(glyph * n, style=colour)
    return bar


def memory_legend(short: bool) -> Text:
    legend = Text()
    for glyph, colour, label, brief, _ in MEMORY_SEGMENTS:
        legend.append(glyph, style=colour)
        legend.append(f" {brief} " if short else f" {label}\n")
    return legend


def gauge(fraction: float | None, width: int) -> Text:
    """A filled bar for a fraction between 0 and 1, and its percentage."""
    if fraction is None:
        return Text(NONE)
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    colour = "green" if fraction > 0.3 else "yellow" if fraction > 0.1 else "red"
    return Text.assemble(("█" * filled, colour), ("░" * (width - filled), "grey50"), f" {fraction:4.0%}")


STATE_STYLES = {
    "ready": "green", "running": "green",
    "loading": "yellow", "starting": "yellow", "reconfiguring": "yellow", "restarting": "yellow",
    "draining": "yellow", "unloading": "yellow", "degraded": "yellow",
    "failed": "bold red", "stopping": "bold red",
}


def state(name: str, detail: str | None = None) -> Text:
    """A state in its colour; `detail` (a loading model's phase) shown in its place."""
    return Text(detail or name, style=STATE_STYLES.get(name, ""))


EIGHTHS = " ▁▂▃▄▅▆▇█"  # a cell filled from the bottom by 0..8 eighths


def chart(values: list[float], width: int, height: int, top: float) -> list[str]:
    """`values` (oldest first) as `height` lines of `width` columns, top line first, on a
    fixed scale from 0 at the bottom to `top`: a column is the highest value of its share
    of the samples, the newest at the right. Zero (idle) draws nothing, so that an idle
    model is an empty chart rather than a wall of blocks; any value above zero shows."""
    if width <= 0 or height <= 0:
        return []
    columns = [max(chunk) if chunk else 0.0 for chunk in _buckets(values, width)]
    levels = [0 if v <= 0 or top <= 0 else max(1, min(8 * height, round(8 * height * v / top))) for v in columns]
    return ["".join(EIGHTHS[min(8, max(0, level - 8 * row))] for level in levels) for row in reversed(range(height))]


def _buckets(values: list[float], width: int) -> list[list[float]]:
    """`values` split into `width` consecutive runs, right-aligned: with fewer values than
    columns the chart starts empty on the left."""
    if len(values) <= width:
        return [[]] * (width - len(values)) + [[v] for v in values]
    edges = [round(i * len(values) / width) for i in range(width + 1)]
    return [values[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def nice_top(peak: float) -> float:
    """A round scale just above `peak` (1, 2, 5 x 10^n), so the axis reads at a glance."""
    if peak <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(peak))
    return next(m * step for m in (1, 2, 5, 10) if m * step >= peak)
