"""Progress frames of a load or reshard, drawn on stderr, and Ctrl-C as "detach"."""

from __future__ import annotations

import sys
from typing import Any

import click

from mgpud.ipc import Stream
from mgpud.records import LoadProgress, from_wire
from mgpud.units import fmt_bytes

from .exits import INTERRUPTED, note
from .output import bar, unicode_ok


class ProgressView:
    """Load progress frames (LoadProgress): on a terminal one line redrawn in place,
    elsewhere (logs, pipes) one line per phase. Replica events ({kind, ...}, sent while
    reshaping) get a line each."""

    def __init__(self, label: str, for_script: bool = False) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        # A script reading --json output wants no progress lines in its logs; a person does.
        self.enabled = self.tty or not for_script
        self.phase: str | None = None  # None after an event: the next phase gets its line again
        self.drawn = False

    def update(self, frame: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if "kind" in frame:
            self.close()
            click.echo(self._event_line(frame), err=True)
            self.phase = None
            return
        progress = from_wire(LoadProgress, frame)
        if self.tty:
            click.echo(f"\r\x1b[K{self._line(progress)}", err=True, nl=False)
            self.drawn = True
        elif progress.phase != self.phase:
            click.echo(self._line(progress), err=True)
        self.phase = progress.phase

    def close(self) -> None:
        if self.drawn:
            click.echo(err=True)
            self.drawn = False

    def _event_line(self, frame: dict[str, Any]) -> str:
        what = frame["kind"].replace("_", " ")  # "replica_starting" -> "replica 2 starting on cpu:0"
        if "replica" in frame:
            what = what.replace("replica", f"replica {frame['replica']}", 1)
        if frame.get("devices"):
            what += f" on {','.join(frame['devices'])}"
        return f"{self.label}: {what}"

    def _line(self, p: LoadProgress) -> str:
        if p.phase == "ready" and p.seconds:
            return f"{self.label}: ready in {sum(p.seconds.values()):.1f} s: {p.shares()}"
        text = f"{self.label}: {p.phase:<8}"
        if p.bytes_total:
            cells = bar([(p.bytes_done / p.bytes_total, "█" if unicode_ok(sys.stderr) else "#", "cyan")], width=24)
            text += (f" [{cells}] {100 * p.bytes_done / p.bytes_total:3.0f}%  "
                     f"{fmt_bytes(p.bytes_done)} / {fmt_bytes(p.bytes_total)}")
        return f"{text}  {p.message}".rstrip() if p.message != p.phase else text.rstrip()


def follow(stream: Stream, view: ProgressView, detached: str) -> dict[str, Any]:
    """Show the stream's frames; return its result. Ctrl-C leaves the work running on the
    daemon (it is not cancelled), says so with `detached`, and exits 130."""
    try:
        for frame in stream:
            view.update(frame)
    except KeyboardInterrupt:
        view.close()
        note(f"detached: {detached}")
        click.get_current_context().exit(INTERRUPTED)
    finally:
        view.close()
    assert stream.result is not None
    return stream.result
