"""The telemetry worker's loop: follow the daemon's events socket, reconnect forever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual.message import Message

from mgpud.ipc import AsyncClient, MgpudError

from .messages import ConnectionChanged, DaemonEvent, SnapshotArrived
from .state import HISTORY_SAMPLES, History, parse_snapshot

RETRY_S = 1.0  # between attempts to reach a daemon that is down


async def follow(client: AsyncClient, post: Callable[[Message], Any]) -> None:
    """Post a SnapshotArrived per telemetry message and a DaemonEvent per lifecycle event;
    ConnectionChanged when the daemon goes away (or is silent for the client's timeout)
    and when it answers again. Returns only when cancelled."""
    history = History(HISTORY_SAMPLES)
    connected: bool | None = None  # None: not known yet
    while True:
        try:
            async for event in client.events():
                if not connected:
                    connected = True
                    post(ConnectionChanged(True, "", float(event.get("time") or time.time())))
                post(_message(event, history))
        except (MgpudError, ValueError) as exc:
            reason = str(exc)
        if connected is not False:
            connected = False
            post(ConnectionChanged(False, reason, time.time()))
        await asyncio.sleep(RETRY_S)


def _message(event: dict[str, Any], history: History) -> Message:
    if event.get("topic") == "telemetry":
        return SnapshotArrived(parse_snapshot(event["data"], history))
    return DaemonEvent(float(event.get("time") or 0.0), event["data"])
