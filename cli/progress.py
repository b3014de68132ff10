"""Progress frames of a load or reshard, drawn on stderr, and Ctrl-C as "detach"."""

from __future__ import annotations

import sys
from typing import Any

import click

from mgpud.units import fmt_bytes
from mgpud.ipc import Stream

from .exits import INTERRUPTED, note
from .output import bar, unicode_ok


class ProgressView:
    """Load progress frames ({phase, bytes_done, ...}): on a terminal one line redrawn in
    place, elsewhere (logs, pipes) one line per phase. Replica events ({kind, ...}, sent
    while reshaping) get a line each."""

    def __init__(self, label: str, for_script: bool = False) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        # A script reading --json output wants no progress lines in its logs; a person does.
        self.enabled = self.tty or not for_script
        self.phase: str | None = None
        self.drawn = False

    def update(self, frame: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if "kind" in frame:
            self.close()
            click.echo(self._event_line(frame), err=True)
        elif self.tty:
            click.echo(f"\r\x1b[K{self._line(frame)}", err=True, nl=False)
            self.drawn = True
        elif frame.get("phase") != self.phase:
            click.echo(self._line(frame), err=True)
        self.phase = frame.get("phase")

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

    def _line(self, frame: dict[str, Any]) -> str:
        text = f"{self.label}: {frame.get('phase', ''):<8}"
        done, total = frame.get("bytes_done") or 0, frame.get("bytes_total") or 0
        if total:
            cells = bar([(done / total, "█" if unicode_ok(sys.stderr) else "#", "cyan")], width=24)
            text += f" [{cells}] {100 * done / total:3.0f}%  {fmt_bytes(done)} / {fmt_bytes(total)}"
        message = frame.get("message") or ""
        return f"{text}  {message}".rstrip() if message != frame.get("phase") else text.rstrip()


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
