"""`mgpud cancel`: stop running generations, whichever client started them."""

from __future__ import annotations

from typing import Any

import click

from .context import Settings, complete_model_names, global_options, pass_settings
from .exits import CliError


@click.command()
@click.argument("requests", nargs=-1, metavar="[REQUEST_ID]...")
@click.option("--model", metavar="NAME", shell_complete=complete_model_names,
              help="Cancel every running generation of model NAME.")
@click.option("--all", "everything", is_flag=True, help="Cancel every running generation.")
@global_options()
@pass_settings
def cancel(settings: Settings, requests: tuple[str, ...], model: str | None, everything: bool) -> None:
    """Cancel running generations: those with these ids (the GENERATION column of
    `mgpud ps`, the request_id of `mgpud generate --json`), every one of a model
    (--model), or all (--all). Each ends at once with finish_reason "cancelled" and frees
    its KV cache; its client gets what was generated so far.

    \b
    Examples:
      mgpud ps                  # running generations are listed under the models
      mgpud cancel gen-12 gen-13
      mgpud cancel --model smol
      mgpud cancel --all
    """
    if (bool(requests), model is not None, everything).count(True) != 1:
        raise click.UsageError("give the generations' ids, --model NAME or --all")
    with settings.client() as client:
        if requests:
            replies = [client.call("cancel", request=r) for r in requests]
        else:
            replies = [client.call("cancel", model=model) if model else client.call("cancel", all=True)]
    ids = [i for reply in replies for i in reply["requests"]]
    settings.say({"cancelled": bool(ids), "requests": ids}, _words)
    if missing := [r for r in requests if r not in ids]:
        raise CliError(f"no generation {', '.join(missing)} is running (it may just have finished); "
                       "`mgpud ps` lists those that are")


def _words(reply: dict[str, Any]) -> str:
    return f"cancelled {', '.join(reply['requests'])}" if reply["cancelled"] else "no generation was running"


COMMANDS = (cancel,)
