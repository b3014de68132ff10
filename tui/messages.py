"""Messages the telemetry worker posts to the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from .state import Snapshot


@dataclass
class SnapshotArrived(Message):
    """The daemon's latest telemetry. A newer one replaces one still queued, so a slow
    terminal draws the latest state instead of falling behind the stream."""

    snapshot: Snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotArrived)


@dataclass
class DaemonEvent(Message):
    """A lifecycle event from the daemon (model_ready, replica_failed, ...)."""

    at: float  # the daemon's clock, seconds since the epoch (Message.time is taken)
    data: dict[str, Any]


@dataclass
class ConnectionChanged(Message):
    connected: bool
    reason: str  # why the daemon cannot be reached; empty when connected
    at: float  # when it was noticed, seconds since the epoch
