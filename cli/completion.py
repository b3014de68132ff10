"""`mgpud completion SHELL`: the shell completion script, from click's own machinery."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish): commands, options, and
    the names of the models the daemon serves.

    \b
    Examples:
      eval "$(mgpud completion bash)"                 # in ~/.bashrc
      eval "$(mgpud completion zsh)"                  # in ~/.zshrc
      mgpud completion fish > ~/.config/fish/completions/mgpud.fish
    """
    root = ctx.find_root()
    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one of click's
    click.echo(cls(root.command, {}, "mgpud", "_MGPUD_COMPLETE").source())


COMMANDS = (completion,)
