"""`mgpud`: the root command, its global options, and how errors become exit codes."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mgpud.ipc.errors import MgpudError

from . import (cancel, chat, completion, devices, generate, lifecycle, metrics, plan, ps, run, serve, status, store,
               top, up)
from .context import Settings, global_options
from .exits import FAILED, INTERRUPTED, USAGE, CliError, code_for, fail


ALIASES = {"gpus": "devices", "stop": "unload"}  # nvidia-smi's and Ollama's words


class MgpudGroup(click.Group):
    """Runs commands in click's non-standalone mode so that every failure, wherever it is
    raised, leaves as one line on stderr with the documented exit code."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, ALIASES.get(name, name))

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv
        try:
            code = super().main(argv, prog_name or "mgpud", standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "mgpud"
            code = fail(f"{exc.format_message().rstrip('.')} (see `{where} --help`)", USAGE, where=where,
                        as_json=as_json)
        except click.ClickException as exc:
            code = fail(exc.format_message(), exc.exit_code, as_json=as_json)
        except click.Abort:
            code = fail("interrupted", INTERRUPTED, as_json=as_json)
        except CliError as exc:
            code = fail(exc.message, exc.code, as_json=as_json)
        except MgpudError as exc:
            code = fail(exc.message, code_for(exc), exc.code, as_json=as_json)
        except BrokenPipeError:
            # The reader left (`mgpud generate ... | head`): stop quietly. Python's own recipe:
            # point stdout at /dev/null so that the flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = FAILED
        sys.exit(code if isinstance(code, int) else 0)


@click.group("mgpud", cls=MgpudGroup, context_settings={"help_option_names": ["-h", "--help"]})
@global_options()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Serve LLMs on the GPUs (or CPU virtual devices) of one machine.

    \b
    A first session:
      mgpud serve --devices cpu:2 &        # the daemon, in the foreground
      mgpud load demo --name smol          # SmolLM2-135M, shape chosen by the planner
      mgpud generate smol "Tell me a joke"
      mgpud ps                             # models, shapes, tokens/s, TTFT
      mgpud unload smol

    Global options go before or after the command: `mgpud --json ps` = `mgpud ps --json`.
    Exit codes: 0 success, 1 failed operation, 2 usage error, 3 daemon unreachable,
    130 interrupted (Ctrl-C).
    """
    ctx.ensure_object(Settings)
    if os.environ.get("NO_COLOR"):
        ctx.color = False


for module in (serve, up, status, devices, ps, lifecycle, generate, cancel, chat, run, store, plan, top, metrics,
               completion):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli.main()
