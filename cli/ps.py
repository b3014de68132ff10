"""`mgpud ps`: one row per model replica: shape, devices, state, memory, KV, load, speed."""

from __future__ import annotations

from typing import Any

import click

from mgpud.units import fmt_bytes

from .context import Settings, global_options, pass_settings
from .output import emit_json, fmt_ms, fmt_rate, state, table

HEADERS = ("NAME", "REPLICA", "TP x DP", "DEVICES", "STATE", "MEMORY", "KV USE", "RUN/WAIT",
           "TOK/S", "TTFT P95", "PIDS")
RIGHT = frozenset({1, 5, 6, 7, 8, 9})


@click.command()
@global_options()
@pass_settings
def ps(settings: Settings) -> None:
    """One row per model and replica: name, tp x dp, devices, state, memory, KV cache use,
    running/waiting requests, tokens/s (last 10 s), TTFT p95 and worker PIDs.

    \b
    Examples:
      mgpud ps
      mgpud ps --json | jq '.models[] | {name, state, tp, dp}'
    """
    with settings.client() as client:
        result = client.call("models")
    if settings.json:
        emit_json(result)
    elif not result["models"]:
        click.echo("no model loaded; load one with `mgpud load demo`")
    else:
        rows = [row for m in result["models"] for row in model_rows(m)]
        click.echo(table(HEADERS, rows, RIGHT))


def model_rows(m: dict[str, Any]) -> list[list[str]]:
    shape = f"{m['tp']} x {m['dp']}"
    replicas = (m.get("stats") or {}).get("replicas")
    if not replicas:  # loading, or failed before any replica started
        return [[m["name"], "-", shape, ",".join(m["devices"]) or "-", _state_label(m["state"], m.get("progress")),
                 "-", "-", "-", "-", "-", "-"]]
    return [[m["name"], str(r["index"]), shape, ",".join(r["devices"]), state(r["state"]),
             fmt_bytes(replica_memory(r)), _kv_use(r), f"{r.get('running', 0)}/{r.get('waiting', 0)}",
             fmt_rate(r.get("tokens_per_s_10s")), fmt_ms(r.get("ttft_p95_ms")), ",".join(map(str, r["pids"])) or "-"]
            for r in replicas]


def replica_memory(r: dict[str, Any]) -> int:  # bytes over all ranks of the replica
    weights = r.get("weight_bytes_per_rank") or []
    activations = r.get("peak_activation_bytes_per_rank") or []
    return sum(weights) + sum(activations) + (r.get("kv_bytes_per_rank") or 0) * len(weights)


def _kv_use(r: dict[str, Any]) -> str:
    total = r.get("kv_blocks_total")
    return f"{100 * (r.get('kv_blocks_used') or 0) / total:.1f}%" if total else "-"


def _state_label(text: str, progress: dict[str, Any] | None) -> str:
    if text != "loading" or not progress:
        return state(text)
    if progress.get("bytes_total"):
        return state("loading") + f" {100 * progress['bytes_done'] / progress['bytes_total']:.0f}%"
    return state("loading") + f" ({progress['phase']})"


COMMANDS = (ps,)
