"""`mgpud devices` (alias `gpus`): one row per device with its memory split."""

from __future__ import annotations

from typing import Any

import click

from mgpud.units import fmt_bytes

from .context import Settings, global_options, pass_settings
from .output import bar, emit_json, fmt_optional, table, unicode_ok

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
    with settings.client() as client:
        result = client.call("devices")
    if settings.json:
        emit_json(result)
        return
    click.echo(table(HEADERS, [_row(d) for d in result["devices"]], RIGHT))
    names = ("weights", "KV in use", "KV reserved", "activations+other", "free")
    click.echo("\n" + "  ".join(f"{g} {n}" for g, n in zip(GLYPHS[unicode_ok()], names)))


def _row(d: dict[str, Any]) -> list[str]:
    owner = f"{d['model']} replica {d['replica']} rank {d['rank']}" if d.get("model") else "-"
    readings = [fmt_optional(d.get("utilization"), "%"), fmt_optional(d.get("temperature"), "°C"),
                fmt_optional(d.get("power"), " W")]
    m, total = d.get("memory"), d.get("memory_total")
    if d.get("error") or not m or not total:
        why = d.get("error") or "memory unreadable"
        return [d["id"], d["name"], click.style(why, fg="red"), "-", "-", "-", "-", "-", *readings, owner]
    other = m["activations"] + m["other"]
    parts = (m["weights"], m["kv_used"], m["kv_allocated"] - m["kv_used"], other, m["free"])
    cells = bar([(p / total, g, c) for p, g, c in zip(parts, GLYPHS[unicode_ok()], COLOURS)])
    kv = f"{fmt_bytes(m['kv_allocated'])} ({_percent(m['kv_used'], m['kv_allocated'])})"
    return [d["id"], d["name"], f"[{cells}]", f"{fmt_bytes(total - m['free'])} / {fmt_bytes(total)}",
            fmt_bytes(m["weights"]), kv, fmt_bytes(other), fmt_bytes(m["free"]), *readings, owner]


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


COMMANDS = (devices_command,)
