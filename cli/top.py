"""`mgpud top`: the live dashboard (mgpud.tui), started only when a daemon answers."""

from __future__ import annotations

import click

from .context import Settings, global_options, pass_settings
from .exits import CliError


@click.command()
@global_options("runtime_dir", "timeout")
@pass_settings
def top(settings: Settings) -> None:
    """The dashboard: devices with their memory split, models and replicas, tokens/s,
    TTFT, KV headroom and events, refreshed live. Press q to leave.

    \b
    Example:
      mgpud top --runtime-dir /run/mgpud
    """
    with settings.client() as client:
        client.call("ping")  # no daemon: exit 3 with the hint now, not inside a blank screen
    try:
        from mgpud.tui.app import run
    except ImportError as exc:
        raise CliError(f"the dashboard is not available in this installation ({exc}); "
                       "use `mgpud ps` and `mgpud devices` instead") from None
    code = run(runtime_dir=settings.runtime_dir)
    if code:
        click.get_current_context().exit(code)


COMMANDS = (top,)
