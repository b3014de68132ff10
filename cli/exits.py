"""Exit codes and the one-line error messages of the command line."""

from __future__ import annotations

import json

import click

from mgpud.ipc.errors import BAD_REQUEST, NO_DAEMON, MgpudError

OK = 0
FAILED = 1  # the operation was refused or failed
USAGE = 2  # a bad command line: unknown option, a value out of range
UNREACHABLE = 3  # no daemon answers on the control socket
INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT death (128 + 2)


class CliError(Exception):
    """Ends the command with `code` after printing `message` on stderr."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def code_for(exc: MgpudError) -> int:
    if exc.code == NO_DAEMON:
        return UNREACHABLE
    # The daemon found an argument wrong (its bad_request reply, raised as BadRequest):
    # the fix is in the command line, as with any other usage error.
    if exc.code == BAD_REQUEST:
        return USAGE
    return FAILED


# The `code` of a --json error for failures the command line finds itself (the daemon's
# refusals keep the protocol's code: not_found, busy, ...).
CODE_NAMES = {FAILED: "failed", USAGE: "usage", UNREACHABLE: NO_DAEMON, INTERRUPTED: "interrupted"}


def fail(message: str, exit_code: int, code: str | None = None, where: str = "mgpud", as_json: bool = False) -> int:
    """Render a failure once, for every command: one line on stderr, or with --json the object
    {"error": {"code", "message"}} on stdout (scripts read one place). Returns `exit_code`."""
    if as_json:
        error = {"code": code or CODE_NAMES.get(exit_code, "failed"), "message": message}
        click.echo(json.dumps({"error": error}, indent=2))
    else:
        say(message, where)
    return exit_code


def say(message: str, where: str = "mgpud") -> None:
    """One line on stderr naming the program (or the subcommand at fault), then the problem."""
    click.echo(f"{click.style(where + ':', fg='red', bold=True)} {message}", err=True)


def note(message: str) -> None:
    """A remark on stderr that is not an error (progress detached, generation cancelled)."""
    click.echo(click.style(message, dim=True), err=True)
