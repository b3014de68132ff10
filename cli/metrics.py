"""`mgpud metrics`: the daemon's counters and each model's figures."""

from __future__ import annotations

from typing import Any

import click

from .context import Settings, global_options, pass_settings
from .output import emit_json, fmt_duration, fmt_ms, fmt_rate, state, table

HEADERS = ("MODEL", "STATE", "RUN", "WAIT", "KV USE", "PROMPT TOK", "GEN TOK", "TOK/S", "TTFT P50",
           "TTFT P95", "FINISHED", "FAILED", "PREEMPT", "PREFIX HIT")
RIGHT = frozenset(range(2, len(HEADERS)))


@click.command()
@click.option("--prometheus", is_flag=True, help="Print the Prometheus text format instead, as GET /metrics serves it.")
@global_options()
@pass_settings
def metrics(settings: Settings, prometheus: bool) -> None:
    """The current figures: daemon request and error counters, and per model the batch,
    KV cache use, tokens in and out, tokens/s (last 10 s), TTFT percentiles, finished and
    failed requests, preemptions and the prefix cache hit rate.

    \b
    Examples:
      mgpud metrics
      mgpud metrics --prometheus > /var/lib/node_exporter/textfile/mgpud.prom
    """
    with settings.client() as client:
        result = client.call("metrics", format="prometheus" if prometheus else "json")
    if prometheus:  # the daemon renders it, as its HTTP API serves it at GET /metrics
        click.echo(result["text"], nl=False)
    elif settings.json:
        emit_json(result)
    else:
        click.echo(_daemon_line(result["daemon"]))
        if result["models"]:
            rows = [_model_row(name, m) for name, m in result["models"].items()]
            click.echo("\n" + table(HEADERS, rows, RIGHT))


def _daemon_line(d: dict[str, Any]) -> str:
    requests = sum(d["requests_total"].values())
    busiest = ", ".join(f"{op} {n}" for op, n in sorted(d["requests_total"].items(), key=lambda kv: -kv[1])[:4])
    errors = ", ".join(f"{code} {n}" for code, n in d["errors_total"].items()) or "none"
    return (f"daemon {state(d['state'])} for {fmt_duration(d['uptime_s'])}: {requests} requests ({busiest}); "
            f"errors: {errors}; malformed {d['malformed_total']}, dropped {d['dropped_total']}")


def _model_row(name: str, m: dict[str, Any]) -> list[str]:
    s = m.get("stats") or {}  # none while loading
    kv = f"{100 * s['kv_blocks_used'] / s['kv_blocks_total']:.1f}%" if s.get("kv_blocks_total") else "-"
    hits = (f"{100 * s['prefix_cache_hits'] / s['prefix_cache_queries']:.0f}%"
            if s.get("prefix_cache_queries") else "-")
    return [name, state(m["state"]), str(s.get("running", "-")), str(s.get("waiting", "-")), kv,
            f"{s.get('prompt_tokens_total', 0):,}", f"{s.get('generation_tokens_total', 0):,}",
            fmt_rate(s.get("tokens_per_s_10s")), fmt_ms(s.get("ttft_p50_ms")), fmt_ms(s.get("ttft_p95_ms")),
            str(s.get("requests_finished", 0)), str(s.get("requests_failed", 0)), str(s.get("preemptions", "-")),
            hits]


COMMANDS = (metrics,)
