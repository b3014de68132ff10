"""`mgpud status` and `mgpud version`."""

from __future__ import annotations

from typing import Any

import click

from mgpud import __version__
from mgpud.ipc import DaemonUnavailable

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
    with settings.client() as client:
        result = client.call("status")
    if settings.json:
        emit_json(result)
    else:
        click.echo(format_status(result))


def format_status(s: dict[str, Any]) -> str:
    devices = s["devices"]
    lines = [
        (f"mgpud {s['version']} (protocol {s['protocol']}), pid {s['pid']}, {state(s['state'])} "
         f"for {fmt_duration(s['uptime_s'])}"),
        f"  control   {s['control_socket']}",
        f"  events    {s['events_socket']}",
        f"  state     {s['state_file']}",
        f"  config    {s['config_file'] or 'none (flags and defaults)'}",
        f"  devices   {devices['total']} {'/'.join(devices['kinds'])}, {devices['free']} free",
        f"  models    {len(s['models']) or 'none'}",
    ]
    for m in s["models"]:
        health = state(m["state"])
        if m["state"] == "loading" and m.get("progress"):
            health += f" ({m['progress']['phase']})"
        if m.get("error"):
            health += f": {m['error']}"
        lines.append(f"    {m['name']}  tp={m['tp']} dp={m['dp']} on {','.join(m['devices'])}  {health}")
    return "\n".join(lines)


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
