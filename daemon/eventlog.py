"""Lifecycle events in the daemon's log, at the level an operator filters on: a failure
is an error (the model is down) or a warning (a replica died and is being restarted);
loads, reshapes, unloads and restarts are information; a replica's start is debug.
Events already logged where they happen (daemon stopping, config reloaded) and load
progress are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mgpud.daemon.events")

Event = dict[str, Any]


def _shape(s: dict[str, int]) -> str:
    return f"tp={s['tp']} dp={s['dp']}"


def _replica(e: Event) -> str:
    return f"{e['model']} replica {e['replica']}"


# kind -> (level, the line)
LINES: dict[str, tuple[int, Callable[[Event], str]]] = {
    "daemon_ready": (logging.INFO, lambda e: "ready: start-up models are loaded or failed"),
    "model_loading": (logging.INFO, lambda e: f"loading {e['model']} as {_shape(e)}"),
    "model_ready": (logging.INFO, lambda e: f"{e['model']} ready as {_shape(e)}"),
    "model_failed": (logging.ERROR, lambda e: f"loading {e['model']} failed: {e['error']}"),
    "model_unloading": (logging.INFO, lambda e: f"unloading {e['model']}"
                        + (", cancelling its generations" if e["force"] else ", after its generations end")),
    "model_unloaded": (logging.INFO, lambda e: f"{e['model']} unloaded"),
    "replica_starting": (logging.DEBUG, lambda e: f"{_replica(e)} starting on {', '.join(e['devices'])}"),
    "replica_ready": (logging.INFO, lambda e: f"{_replica(e)} ready on {', '.join(e['devices'])} "
                      f"(worker pids {', '.join(map(str, e['pids']))})"),
    "replica_failed": (logging.WARNING, lambda e: f"{_replica(e)} failed: {e['error']}"),
    "replica_restarting": (logging.INFO, lambda e: f"{_replica(e)}: restart attempt {e['attempt']}"),
    "replica_gave_up": (logging.ERROR, lambda e: f"{_replica(e)} failed {e['failures']} times within 5 minutes "
                        f"and stays down: {e['error']}; unload and load the model to try again"),
    "replica_draining": (logging.INFO, lambda e: f"{_replica(e)} draining: it finishes its requests and stops"),
    "replica_stopped": (logging.INFO, lambda e: f"{_replica(e)} stopped; its devices are free"),
    "reconfigure_started": (logging.INFO, lambda e: f"reshaping {e['model']}: "
                            f"{_shape(e['from'])} -> {_shape(e['to'])}"),
    "reconfigure_finished": (logging.INFO, lambda e: f"{e['model']} reshaped to {_shape(e['to'])} in "
                             f"{e['duration_s']:.1f} s (requests held {e['held_s']:.1f} s)"),
}


def log_event(event: Event) -> None:
    line = LINES.get(event["kind"])
    if line is not None:
        level, text = line
        log.log(level, "%s", text(event))
