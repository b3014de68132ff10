"""The global options (--runtime-dir, --json, --timeout) and the client they configure.

They are accepted before the command (`mgpud --json ps`) and after it (`mgpud ps --json`):
both spellings land in the one `Settings` object of the invocation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

from mgpud.ipc import Client
from mgpud.ipc.client import DEFAULT_TIMEOUT

from .output import emit_json

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    runtime_dir: Path | None = None  # None: resolved as mgpud.ipc.paths.runtime_dir says
    json: bool = False
    timeout: float = DEFAULT_TIMEOUT  # seconds of silence before the daemon counts as gone

    def client(self) -> Client:
        return Client(self.runtime_dir, timeout=self.timeout)

    def answer(self, op: str, words: Callable[[dict[str, Any]], str], **args: Any) -> None:
        """Call `op` on the daemon and print its reply (see `say`)."""
        with self.client() as client:
            reply = client.call(op, **args)
        self.say(reply, words)

    def say(self, reply: dict[str, Any], words: Callable[[dict[str, Any]], str]) -> None:
        """Print a reply: with --json exactly as the daemon sent it (scripts rely on its
        shape, so it is never read into records first), else as `words` puts it."""
        if self.json:
            emit_json(reply)
        else:
            click.echo(words(reply))


pass_settings = click.make_pass_decorator(Settings, ensure=True)


def _store(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value not in (None, False):  # not given here: keep what the root command set
            setattr(ctx.ensure_object(Settings), attr, value)
    return callback


_OPTIONS: dict[str, Callable[[F], F]] = {
    "runtime_dir": click.option(
        "--runtime-dir", type=click.Path(file_okay=False, path_type=Path), expose_value=False,
        callback=_store("runtime_dir"),
        help="Directory of the daemon's sockets. Default: $MGPUD_RUNTIME_DIR, $RUNTIME_DIRECTORY, "
             "$XDG_RUNTIME_DIR/mgpud, else /tmp/mgpud-UID."),
    "json": click.option("--json", is_flag=True, expose_value=False, callback=_store("json"),
                         help="Print one JSON object (see docs/cli.md) instead of text."),
    "timeout": click.option(
        "--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", expose_value=False,
        callback=_store("timeout"),
        help=f"Seconds without an answer before the daemon counts as unreachable (default {DEFAULT_TIMEOUT:g})."),
}


def global_options(*names: str) -> Callable[[F], F]:
    """Add the named global options (default: all three) to a command."""
    chosen = names or tuple(_OPTIONS)

    def decorate(fn: F) -> F:
        for name in reversed(chosen):
            fn = _OPTIONS[name](fn)
        return fn
    return decorate


def complete_model_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of NAME arguments: the models the daemon serves, if one answers."""
    settings = ctx.find_object(Settings) or Settings()
    try:
        with Client(settings.runtime_dir, timeout=0.5) as client:
            models = client.call("models")["models"]
    except Exception:  # completion must never print a traceback into the user's prompt
        return []
    return [CompletionItem(m["name"]) for m in models if m["name"].startswith(incomplete)]
