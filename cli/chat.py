"""`mgpud chat NAME`: an interactive conversation in the terminal."""

from __future__ import annotations

import sys
from typing import Any

import click

from mgpud.ipc import Client, RemoteError

from .context import Settings, complete_model_names, global_options, pass_settings
from .exits import CliError, note, say
from .generate import echo_now, sampling_args, sampling_options, stream_generation, summary
from .params import schema_argument

HELP = "/reset forgets the conversation, /exit (or Ctrl-D) leaves; Ctrl-C stops a reply."


@click.command()
@schema_argument("generate", "model", "name", shell_complete=complete_model_names)
@click.option("--system", metavar="TEXT", help="A system message that opens the conversation.")
@click.option("--stats", is_flag=True, help="Print tokens, TTFT and tokens/s after each reply.")
@sampling_options
@global_options("runtime_dir", "timeout")
@pass_settings
def chat(settings: Settings, name: str, system: str | None, stats: bool, **options: Any) -> None:
    """Chat with model NAME. The whole conversation is sent each turn as chat messages,
    which the daemon formats with the model's chat template.

    \b
    In the chat: /reset forgets the conversation, /exit (or Ctrl-D) leaves,
    Ctrl-C stops the reply being written (and cancels it on the daemon).

    \b
    Examples:
      mgpud chat smol
      mgpud chat smol --system "Answer in French." --temperature 0.7
    """
    with settings.client() as client:
        _check_served(client, name)
    converse(settings, name, system, stats, options)


def converse(settings: Settings, name: str, system: str | None, stats: bool, options: dict[str, Any]) -> None:
    """The chat loop with served model `name` until /exit or Ctrl-D."""
    if sys.stdin.isatty():
        import readline  # noqa: F401  (gives input() line editing and an up-arrow history)
    opening = [{"role": "system", "content": system}] if system else []
    with settings.client() as client:
        click.echo(click.style(f"chatting with {name}; {HELP}", dim=True))
        messages = list(opening)
        while (line := _read_line()) is not None:
            if line == "/exit":
                break
            if line == "/reset":
                messages = list(opening)
                note("(conversation reset)")
            elif line.startswith("/"):
                note(f"unknown command {line.split()[0]}; {HELP}")
            elif line.strip():
                messages = _turn(client, name, messages, line, sampling_args(options), stats)


def _check_served(client: Client, name: str) -> None:
    served = [m["name"] for m in client.call("models")["models"]]
    if name not in served:
        raise CliError(f"no model named {name!r} (loaded: {', '.join(served) or 'none'}); "
                       f"load it with `mgpud load`")


def _read_line() -> str | None:
    """The next line the user types; None at Ctrl-D or Ctrl-C."""
    prompt = "you> "
    if sys.stdout.isatty() and click.get_current_context().color is not False:
        prompt = click.style(prompt, fg="green", bold=True)  # input() writes it raw, past click.echo
    try:
        line = input(prompt)
    except (EOFError, KeyboardInterrupt):
        click.echo()
        return None
    if not sys.stdin.isatty():
        click.echo(line)  # a piped conversation reads like a typed one
    return line


def _turn(client: Client, name: str, messages: list[dict[str, str]], line: str, sampling: dict[str, Any],
          stats: bool) -> list[dict[str, str]]:
    """Send the conversation plus `line`; return it with the reply, or unchanged when the
    reply failed or was interrupted (so the next turn starts clean)."""
    asked = messages + [{"role": "user", "content": line}]
    click.echo(click.style(f"{name}> ", fg="cyan", bold=True), nl=False)
    try:
        result, interrupted = stream_generation(client, {"model": name, "messages": asked, **sampling}, echo_now)
    except RemoteError as exc:
        click.echo()
        say(exc.message)
        return messages
    click.echo()
    if stats or interrupted:
        note(summary(result))
    if interrupted:
        return messages
    return asked + [{"role": "assistant", "content": result["text"]}]


COMMANDS = (chat,)
