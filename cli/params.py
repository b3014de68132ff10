"""Option types shared by several commands."""

from __future__ import annotations

import click

from mgpud.ipc.units import parse_size


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
