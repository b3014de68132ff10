"""`mgpud status` and `mgpud version`."""

from __future__ import annotations

from typing import Any

import click
from mgpud.ipc import DaemonUnavailable

from mgpud import __version__
from mgpud.records import DaemonSummary, ModelRecord, from_wire

from .context import Settings, global_options, pass_settings
from .output import emit_json, fmt_duration, state


@click.command()
@global_options()
@pass_settings
def status(settings: Settings) -> None:
    """The daemon's version, uptime, sockets, devices and models with their health.

    \b
    Examples:
      mgpud status
      mgpud status --json | jq .models
    """
    settings.answer("status", format_status)


def format_status(s: dict[str, Any]) -> str:
    d, devices = from_wire(DaemonSummary, s), s["devices"]
    lines = [
        f"mgpud {d.version} (protocol {d.protocol}), pid {d.pid}, {state(d.state)} for {fmt_duration(d.uptime_s)}",
        f"  control   {s['control_socket']}",
        f"  events    {s['events_socket']}",
        f"  http      {s.get('http') or 'off'}",
        f"  state     {s['state_file']}",
        f"  config    {s['config_file'] or 'none (flags and defaults)'}",
        f"  devices   {devices['total']} {'/'.join(devices['kinds'])}, {devices['free']} free",
        *_workers_line(s.get("warm_workers")),
        f"  models    {len(s['models']) or 'none'}",
    ]
    return "\n".join(lines + [_model_line(from_wire(ModelRecord, m)) for m in s["models"]])


def _workers_line(pool: dict[str, int] | None) -> list[str]:
    if not pool:  # an older daemon
        return []
    return [f"  workers   {pool['ready']} warm, {pool['starting']} starting (keeps {pool['target']})"]


def _model_line(m: ModelRecord) -> str:
    health = state(m.state)
    if m.state == "loading" and m.progress:
        health += f" ({m.progress.phase})"
    if m.error:
        health += f": {m.error}"
    return f"    {m.name}  tp={m.tp} dp={m.dp} on {','.join(m.devices)}  {health}"


@click.command()
@global_options()
@pass_settings
def version(settings: Settings) -> None:
    """This command line's version and, when one answers, the daemon's.

    \b
    Example:
      mgpud version --json
    """
    try:
        with settings.client() as client:
            daemon: dict[str, Any] | None = client.call("version")
        absent = ""
    except DaemonUnavailable as exc:
        daemon, absent = None, exc.message
    if settings.json:
        emit_json({"cli": __version__, "daemon": daemon})
        return
    click.echo(f"mgpud {__version__}")
    if daemon is None:
        click.echo(f"daemon: not reachable ({absent})")
    else:
        click.echo(f"daemon: mgpud {daemon['version']}, protocol {daemon['protocol']}, "
                   f"Python {daemon['python']}, pyzmq {daemon['pyzmq']} (libzmq {daemon['libzmq']})")


COMMANDS = (status, version)
