"""How the command line prints: JSON for scripts; aligned tables and human units for people.

Styled text goes through click.echo, which strips the colours when stdout is not a
terminal (and the root command turns them off for NO_COLOR), so colour needs no checks here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:,.0f} ms"


def fmt_rate(tokens_per_s: float | None) -> str:
    return "-" if tokens_per_s is None else f"{tokens_per_s:,.1f} tok/s"


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (s, "s")]
    shown = [f"{v}{u}" for v, u in parts if v][:2]
    return " ".join(shown) or "0s"


def fmt_optional(value: float | None, unit: str, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> str:
    """Columns padded to their widest cell (colours excluded); `right` columns right-aligned."""
    cells = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(click.unstyle(row[i])) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        padded = [_pad(cell, widths[i], i in right) for i, cell in enumerate(row)]
        line = "  ".join(padded).rstrip()
        lines.append(click.style(line, bold=True) if n == 0 else line)
    return "\n".join(lines)


def _pad(cell: str, width: int, right: bool) -> str:
    fill = " " * (width - len(click.unstyle(cell)))
    return fill + cell if right else cell + fill


STATE_COLOURS = {"ready": "green", "running": "green", "loading": "yellow", "starting": "yellow",
                 "unloading": "yellow", "stopping": "yellow", "reconfiguring": "yellow", "draining": "yellow",
                 "restarting": "yellow", "degraded": "red", "failed": "red"}


def state(text: str) -> str:
    return click.style(text, fg=STATE_COLOURS.get(text))


def advice_lines(advice: list[str], indent: str) -> list[str]:
    """The scaling advisor's sentences (mgpud/advice.py), marked so that they stand out."""
    return [f"{indent}{click.style('advice:', fg='yellow')} {line}" for line in advice]


def unicode_ok(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default stdout) takes block characters; else bars fall back to ASCII."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or ""
    return encoding.lower().replace("-", "") == "utf8"


def bar(parts: Sequence[tuple[float, str, str | None]], width: int = 20) -> str:
    """A horizontal bar of `width` cells: each part is (fraction, fill character, colour)."""
    out, used = [], 0
    for fraction, char, colour in parts:
        cells = min(width - used, round(max(0.0, fraction) * width))
        if cells:
            out.append(click.style(char * cells, fg=colour))
            used += cells
    return "".join(out) + " " * (width - used)
