"""The state file: which models are loaded, with their load arguments, across restarts.

Written atomically (a temporary file in the same directory, fsync, rename) so that a
crash or power loss leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from mgpud.ipc.schema import BadRequest, check_args

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE

    def load(self) -> list[dict[str, Any]]:
        """The saved models' load arguments; an unreadable file is reported and ignored."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring the state file %s: %s", self.path, exc)
            return []
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            log.warning("ignoring the state file %s: not version %d", self.path, STATE_VERSION)
            return []
        models = []
        for entry in raw.get("models") or []:
            try:
                if not isinstance(entry, dict):
                    raise BadRequest("not a map")
                models.append(check_args("load", entry))
            except BadRequest as exc:
                log.warning("state file %s: skipping the entry %r: %s", self.path, entry, exc)
        return models

    def save(self, models: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": STATE_VERSION, "models": models}, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_dir(self.path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
