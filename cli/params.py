"""Option types shared by several commands, and options derived from the protocol's schema.

An option that stands for an operation's argument takes its type, range, choices and
(unless the command words it better) its help from `OPS[op].args[name]`, so that the
command line refuses exactly what the daemon would, and says so as a usage error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from mgpud.ipc.schema import CHECKS, OPS, Arg
from mgpud.units import parse_size

F = TypeVar("F", bound=Callable[..., Any])


class SizeType(click.ParamType):
    """A byte size as operators write it: 4GiB, 512MiB, 1e9."""

    name = "SIZE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


class SchemaValue(click.ParamType):
    """A value of one of the schema's own kinds (a model name, ...), checked as the daemon checks it."""

    def __init__(self, kind: str) -> None:
        self.name = kind.upper()
        self._check, self._expected = CHECKS[kind]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not self._check(value):
            self.fail(f"{value!r} is not {self._expected}", param, ctx)
        return value


def spec(op: str, name: str) -> Arg:
    return OPS[op].args[name]


def schema_type(op: str, name: str) -> click.ParamType:
    """The click type of argument `name` of operation `op`: its kind, bounds and choices."""
    arg = spec(op, name)
    if arg.choices:
        return click.Choice(arg.choices)
    if arg.kind == "int":
        return click.IntRange(_whole(arg.low), _whole(arg.high), min_open=arg.low_open)
    if arg.kind == "float":
        return click.FloatRange(arg.low, arg.high, min_open=arg.low_open)
    if arg.kind == "str":
        return click.STRING  # its only limit, 4096 characters, is not worth a usage line
    return SchemaValue(arg.kind)


def _whole(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def schema_help(op: str, name: str) -> str:
    """The schema's help of an argument as an option's sentence: "0 = greedy" -> "0 = greedy."."""
    text = spec(op, name).help
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def schema_option(op: str, name: str, *decls: str, **attrs: Any) -> Callable[[F], F]:
    """`click.option` for argument `name` of `op`: `--name-with-dashes` unless `decls` say
    otherwise, the Python parameter named as the argument, type and help from the schema
    (a `help` of None keeps the schema's). A bool becomes a flag left unset (None: the
    daemon's default), a list of strings a repeatable option. `attrs` override the rest."""
    kind = spec(op, name).kind
    if kind == "bool":
        attrs = {"is_flag": True, "default": None, **attrs}
    elif kind == "str_list":
        attrs = {"multiple": True, **attrs}
    else:
        attrs = {"type": schema_type(op, name), **attrs}
    attrs["help"] = attrs.get("help") or schema_help(op, name)
    flag = f"--{name.replace('_', '-')}"
    return click.option(*(decls or (flag,)), name, **attrs)


def schema_argument(op: str, name: str, param: str, **attrs: Any) -> Callable[[F], F]:
    """`click.argument` PARAM for argument `name` of `op`, typed by the schema."""
    return click.argument(param, type=schema_type(op, name), **attrs)
