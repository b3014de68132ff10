"""`mgpud ps`: one row per model replica: shape, devices, state, memory, KV, load, speed."""

from __future__ import annotations

import time
from typing import Any

import click

from mgpud.records import ModelRecord, ReplicaFigures, from_wire
from mgpud.units import fmt_bytes

from .context import Settings, global_options, pass_settings
from .output import fmt_duration, fmt_ms, fmt_rate, state, table

HEADERS = ("NAME", "REPLICA", "TP x DP", "DEVICES", "STATE", "WEIGHTS", "MEMORY", "KV USE", "RUN/WAIT",
           "TOK/S", "TTFT P95", "EXPERT BAL", "PIDS")
RIGHT = frozenset({1, 6, 7, 8, 9, 10, 11})


@click.command()
@global_options()
@pass_settings
def ps(settings: Settings) -> None:
    """One row per model and replica: name, tp x dp, devices, state, memory, KV cache use,
    running/waiting requests, tokens/s (last 10 s), TTFT p95, the MoE expert load balance
    (mean/max tokens per EP rank, or per expert; 1.00 = even) and worker PIDs; then the
    running generations, with the ids `mgpud cancel` takes.

    \b
    Examples:
      mgpud ps
      mgpud ps --json | jq '.models[] | {name, state, tp, dp}'
    """
    settings.answer("models", format_models)


def format_models(reply: dict[str, Any]) -> str:
    models = [from_wire(ModelRecord, m) for m in reply["models"]]
    if not models:
        return "no model loaded; load one with `mgpud load demo`"
    text = table(HEADERS, [row for m in models for row in model_rows(m)], RIGHT)
    running = reply.get("generations")  # absent from an older daemon's reply
    return text + "\n\n" + generation_table(running) if running else text


def generation_table(running: list[dict[str, Any]]) -> str:
    """The running generations, oldest first: the ids `mgpud cancel` takes."""
    now = time.time()
    rows = [[g["id"], g["model"], g["via"], fmt_duration(now - g["started_at"])] for g in running]
    return table(("GENERATION", "MODEL", "VIA", "RUNNING"), rows, frozenset({3}))


def model_rows(m: ModelRecord) -> list[list[str]]:
    shape = f"{m.tp} x {m.dp}" + (" ep" if m.stats and m.stats.expert_parallel else "")
    if m.stats is None or not m.stats.replicas:  # loading, or failed before any replica started
        return [[m.name, "-", shape, ",".join(m.devices) or "-", _state_label(m), *["-"] * 8]]
    return [[m.name, str(r.index), shape, ",".join(r.devices), state(r.state), weights_label(r),
             fmt_bytes(replica_memory(r)),
             _kv_use(r), f"{r.running}/{r.waiting}", fmt_rate(r.tokens_per_s_10s), fmt_ms(r.ttft_p95_ms),
             fmt_balance(r.expert_balance), ",".join(map(str, r.pids)) or "-"]
            for r in m.stats.replicas]


def weights_label(r: ReplicaFigures) -> str:
    """The linear layers' weights (int8, fp8, or the dtype), and an fp8 KV cache."""
    kv = " kv:fp8" if r.kv_cache_dtype and r.kv_cache_dtype.startswith("float8") else ""
    return (r.quantization or r.dtype or "-") + kv


def replica_memory(r: ReplicaFigures) -> int:  # bytes over all ranks of the replica
    kv = (r.kv_bytes_per_rank or 0) * len(r.weight_bytes_per_rank)
    return sum(r.weight_bytes_per_rank) + sum(r.peak_activation_bytes_per_rank) + sum(r.graph_bytes_per_rank) + kv


def fmt_balance(balance: float | None) -> str:
    return "-" if balance is None else f"{balance:.2f}"


def _kv_use(r: ReplicaFigures) -> str:
    """The share of KV blocks in use, and of those ever touched (resident on a CPU device)."""
    if r.kv_headroom is None:
        return "-"
    return f"{100 * (1 - r.kv_headroom):.1f}% ({100 * r.kv_blocks_touched / r.kv_blocks_total:.0f}% touched)"


def _state_label(m: ModelRecord) -> str:
    p = m.progress
    if m.state != "loading" or p is None:
        return state(m.state)
    if p.bytes_total:
        return state("loading") + f" {100 * p.bytes_done / p.bytes_total:.0f}%"
    return state("loading") + f" ({p.phase})"


COMMANDS = (ps,)
