"""Where the daemon's sockets live; the daemon and every client resolve it alike."""

from __future__ import annotations

import os
from pathlib import Path

CONTROL_SOCKET = "control.sock"
EVENTS_SOCKET = "events.sock"


def runtime_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--runtime-dir`, else $MGPUD_RUNTIME_DIR, else $RUNTIME_DIRECTORY (set by systemd),
    else $XDG_RUNTIME_DIR/mgpud where $XDG_RUNTIME_DIR is a directory, else /tmp/mgpud-<uid>."""
    if explicit:
        return Path(explicit)
    env = os.environ
    if env.get("MGPUD_RUNTIME_DIR"):
        return Path(env["MGPUD_RUNTIME_DIR"])
    if env.get("RUNTIME_DIRECTORY"):
        # systemd joins several RuntimeDirectory= entries with ':'; ours is the first.
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    # A login's private directory, unless it is gone (an environment kept through `su`).
    if env.get("XDG_RUNTIME_DIR") and os.path.isdir(env["XDG_RUNTIME_DIR"]):
        return Path(env["XDG_RUNTIME_DIR"]) / "mgpud"
    return fallback_dir()


def fallback_dir() -> Path:
    """The last resort: a fixed name in the world-writable /tmp, so the daemon creates it
    0700 and checks it (mgpud.ipc.trust)."""
    return Path("/tmp") / f"mgpud-{os.getuid()}"


def control_path(rdir: Path) -> Path:
    return rdir / CONTROL_SOCKET


def events_path(rdir: Path) -> Path:
    return rdir / EVENTS_SOCKET


def endpoint(path: Path) -> str:
    """The ZeroMQ endpoint of a socket file."""
    return f"ipc://{path}"
