"""`mgpud serve` (the daemon in the foreground) and `mgpud shutdown` (stop it)."""

from __future__ import annotations

from pathlib import Path

import click

from .context import Settings, global_options, pass_settings
from .exits import USAGE, CliError
from .params import SIZE, schema_option

# mgpud.daemon.settings.LOG_LEVELS, spelled out: importing the daemon would slow every command.
LOG_LEVELS = ("debug", "info", "warning", "error")


@click.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML configuration (default: /etc/mgpud/mgpud.toml when it exists).")
@global_options("runtime_dir")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where state.json (the models to bring back after a restart) lives.")
@click.option("--devices", metavar="cpu:N|0,1,..",
              help="auto (every GPU, else one CPU device), cpu:N virtual CPU devices, or GPU ordinals.")
@click.option("--device-memory", type=SIZE, help="Memory of each CPU virtual device, e.g. 4GiB.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False))
@click.option("--shutdown-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Seconds running generations get to finish on SIGTERM.")
@click.option("--warm-workers", type=click.IntRange(min=0), metavar="N",
              help="Worker processes kept started (torch imported) for the next replica (default 2).")
@click.option("--http", metavar="HOST:PORT|off",
              help="Where the OpenAI-compatible HTTP API listens (default 127.0.0.1:8000); off disables it.")
@click.option("--api-key", envvar="MGPUD_API_KEY", show_envvar=True,
              help="HTTP clients must send `Authorization: Bearer KEY` (every path but /health).")
@click.option("--model-root", "model_roots", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Load models only from this directory (repeatable; the demo and Hugging Face caches always count).")
@pass_settings
def serve(settings: Settings, config: Path | None, state_dir: Path | None, devices: str | None,
          device_memory: int | None, log_level: str | None, shutdown_timeout: float | None,
          warm_workers: int | None, http: str | None, api_key: str | None, model_roots: tuple[Path, ...]) -> None:
    """Run the daemon in the foreground (what systemd runs) until SIGTERM or `mgpud shutdown`.

    Flags override the configuration file.

    \b
    Examples:
      mgpud serve --devices cpu:2 --device-memory 4GiB
      mgpud serve --config /etc/mgpud/mgpud.toml --devices 0,1,2,3
      mgpud serve --http 0.0.0.0:8000 --api-key "$(cat /etc/mgpud/key)"
    """
    from mgpud.daemon import ConfigError, load_config, run_daemon

    overrides = {"runtime_dir": settings.runtime_dir, "state_dir": state_dir, "devices": devices,
                 "device_memory": device_memory, "log_level": log_level and log_level.lower(),
                 "shutdown_timeout": shutdown_timeout, "warm_workers": warm_workers, "http": http,
                 "api_key": api_key, "model_roots": [p.absolute() for p in model_roots] or None}
    try:
        daemon_config = load_config(config, overrides)
    except ConfigError as exc:
        raise CliError(str(exc), USAGE) from None
    code = run_daemon(daemon_config)
    if code:
        click.get_current_context().exit(code)


@click.command()
@schema_option("shutdown", "timeout", metavar="SECONDS",
               help="Seconds running generations get to finish (default: the daemon's shutdown_timeout).")
@global_options("runtime_dir", "json")
@pass_settings
def shutdown(settings: Settings, timeout: float | None) -> None:
    """Stop the daemon: new work is refused, running generations finish, engines stop.

    Here --timeout is the grace period; the client's own timeout goes before the
    command (`mgpud --timeout 10 shutdown`).

    \b
    Example:
      mgpud shutdown --timeout 30
    """
    settings.answer("shutdown", lambda r: f"mgpud is stopping; running generations get {r['timeout']:g} s to finish",
                    timeout=timeout)


COMMANDS = (serve, shutdown)
