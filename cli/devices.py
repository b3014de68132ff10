"""`mgpud devices` (alias `gpus`): one row per device with its memory split."""

from __future__ import annotations

from typing import Any

import click

from mgpud.records import Device, MemorySplit, from_wire
from mgpud.units import fmt_bytes

from .context import Settings, global_options, pass_settings
from .output import bar, fmt_optional, table, unicode_ok

HEADERS = ("DEVICE", "NAME", "MEMORY", "USED", "WEIGHTS", "KV (IN USE)", "ACT+OTHER", "FREE",
           "UTIL", "TEMP", "POWER", "MODEL")
RIGHT = frozenset({3, 4, 5, 6, 7, 8, 9, 10})
# Bar cells: weights, KV in use, KV reserved but empty, activations and others, free.
GLYPHS = {True: ("█", "▓", "▒", "░", "·"), False: ("#", "=", "-", "+", ".")}
COLOURS = ("blue", "magenta", "magenta", "yellow", None)


@click.command("devices")
@global_options()
@pass_settings
def devices_command(settings: Settings) -> None:
    """One row per device: memory bar split into weights / KV / other / free, utilization,
    temperature and power where known, and the model and rank that hold it.

    \b
    Examples:
      mgpud devices
      mgpud gpus --json | jq '.devices[] | {id, free: .memory.free}'
    """
    settings.answer("devices", format_devices)


def format_devices(reply: dict[str, Any]) -> str:
    """The table, then what the bar's glyphs stand for."""
    rows = [_row(from_wire(Device, d)) for d in reply["devices"]]
    names = ("weights", "KV in use", "KV reserved", "activations+other", "free")
    legend = "  ".join(f"{g} {n}" for g, n in zip(GLYPHS[unicode_ok()], names))
    return f"{table(HEADERS, rows, RIGHT)}\n\n{legend}"


def _row(d: Device) -> list[str]:
    owner = f"{d.model} replica {d.replica} rank {d.rank}" if d.model else "-"
    readings = [fmt_optional(d.utilization, "%"), fmt_optional(d.temperature, "°C"), fmt_optional(d.power, " W")]
    if d.error or not d.memory or not d.memory_total:
        why = d.error or "memory unreadable"
        return [d.id, d.name, click.style(why, fg="red"), "-", "-", "-", "-", "-", *readings, owner]
    return [d.id, d.name, *_memory_cells(d.memory, d.memory_total), *readings, owner]


def _memory_cells(m: MemorySplit, total: int) -> list[str]:
    """The bar, used / total, weights, KV allocated (share in use), activations+graphs+other, free."""
    other = m.activations + m.graphs + m.other
    parts = (m.weights, m.kv_used, m.kv_allocated - m.kv_used, other, m.free)
    cells = bar([(p / total, g, c) for p, g, c in zip(parts, GLYPHS[unicode_ok()], COLOURS)])
    kv = f"{fmt_bytes(m.kv_allocated)} ({_percent(m.kv_used, m.kv_allocated)})"
    return [f"[{cells}]", f"{fmt_bytes(total - m.free)} / {fmt_bytes(total)}", fmt_bytes(m.weights), kv,
            fmt_bytes(other), fmt_bytes(m.free)]


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


COMMANDS = (devices_command,)
