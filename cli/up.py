"""`mgpud up`: the whole product in one command: a daemon (started here unless one
already answers), the demo model sharded over this machine's devices, and the dashboard.
Leaving the dashboard stops what this command started."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from mgpud.ipc import Client, DaemonUnavailable
from mgpud.ipc.errors import RemoteError
from mgpud.records import ModelRecord, from_wire

from .context import Settings, global_options, pass_settings
from .exits import CliError, note
from .lifecycle import loaded_summary
from .params import SIZE, schema_option
from .progress import ProgressView, follow

START_TIMEOUT = 60.0  # seconds for a fresh daemon to answer


def _default_devices() -> str:
    """Every GPU where there are some; else one CPU virtual device per core."""
    from mgpud.engine.hosts.inventory import discover

    if any(d.kind == "cuda" for d in discover("auto")):
        return "auto"
    return f"cpu:{max(1, os.cpu_count() or 1)}"


def _answers(settings: Settings) -> bool:
    try:
        with Client(settings.runtime_dir, timeout=1.0) as client:
            client.call("ping")
        return True
    except DaemonUnavailable:
        return False


def _start_daemon(settings: Settings, devices: str) -> subprocess.Popen:
    log = Path(tempfile.gettempdir()) / f"mgpud-up-{os.getuid()}.log"
    args = [sys.executable, "-m", "mgpud.daemon", "--devices", devices]
    if settings.runtime_dir:
        args += ["--runtime-dir", str(settings.runtime_dir)]
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    note(f"started the daemon (pid {proc.pid}, devices {devices}); its log: {log}")
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(settings):
        if proc.poll() is not None:
            raise CliError(f"the daemon exited with code {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            proc.kill()
            raise CliError(f"the daemon did not answer within {START_TIMEOUT:.0f} s; see {log}")
        time.sleep(0.1)
    return proc


def _ensure_model(settings: Settings, model: str, name: str, max_model_len: int, kv_cache_memory: int,
                  attached: bool) -> None:
    """Load MODEL unless it is served. On a daemon that was already running, one that serves
    any model is left as it is, and a refused load only says why: the dashboard opens anyway."""
    with settings.client() as client:
        served = [m["name"] for m in client.call("models")["models"]]
    if name in served or (attached and served):
        return
    try:
        with settings.client() as client:
            stream = client.stream("load", model=model, name=name, tp=0, dp=0, max_model_len=max_model_len,
                                   kv_cache_memory=kv_cache_memory, wait=True)
            result = follow(stream, ProgressView(f"loading {name}"), f"the daemon keeps loading {name}")
    except RemoteError as exc:
        if not attached:
            raise
        note(f"not loading {name}: {exc.message}")
        return
    note(loaded_summary(from_wire(ModelRecord, result)))


def _stop(settings: Settings, proc: subprocess.Popen) -> None:
    try:
        with settings.client() as client:
            client.call("shutdown")
    except (DaemonUnavailable, RemoteError):
        proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    note("stopped the daemon this command started")


@click.command()
@schema_option("load", "model", default="demo", show_default=True, help="Model directory, or `demo`.")
@schema_option("load", "name", default="demo", show_default=True, help="Name to serve it under.")
@click.option("--devices", help="Devices for a daemon started here (default: every GPU, else cpu:<cores>).")
@schema_option("load", "max_model_len", default=4096, show_default=True)
@schema_option("load", "kv_cache_memory", type=SIZE, default="1GiB", show_default=True, help="KV cache per rank.")
@global_options("runtime_dir")
@pass_settings
def up(settings: Settings, model: str, name: str, devices: str | None, max_model_len: int,
       kv_cache_memory: int) -> None:
    """Start everything and watch it: the daemon (unless one already answers), MODEL loaded
    with the shape the planner picks for this machine's devices, and the dashboard. Quitting
    the dashboard (q) stops the daemon again if this command started it. A daemon already
    running is attached to: MODEL is loaded only where it serves none, and the dashboard
    opens even if that load is refused.

    \b
    Examples:
      mgpud up
      mgpud up --devices cpu:3 --model /models/SmolLM2-135M-Instruct
    """
    from mgpud.tui.app import run

    attached = _answers(settings)
    if attached:
        note("a daemon already answers here: opening the dashboard on it")
    proc = None if attached else _start_daemon(settings, devices or _default_devices())
    try:
        _ensure_model(settings, model, name, max_model_len, kv_cache_memory, attached)
        code = run(runtime_dir=settings.runtime_dir)
    finally:
        if proc is not None:
            _stop(settings, proc)
    if code:
        click.get_current_context().exit(code)


COMMANDS = (up,)
