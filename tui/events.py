"""Lifecycle events as one line each for the events log."""

from __future__ import annotations

from typing import Any

from rich.text import Text

QUIET = {"model_progress"}  # the models table shows progress; the log would only scroll


def _shape(shape: Any) -> str:
    if isinstance(shape, dict):
        return f"tp {shape.get('tp', '?')} x dp {shape.get('dp', '?')}"
    return str(shape)


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "?"


def _text(kind: str, e: dict[str, Any]) -> str:
    model = e.get("model") or e.get("name") or "?"
    replica = f"{model} replica {e.get('replica', '?')}"
    devices = ",".join(e.get("devices") or ())
    lines = {
        "daemon_ready": "daemon ready",
        "daemon_stopping": f"daemon stopping; running generations get {_seconds(e.get('timeout'))}",
        "config_reloaded": f"configuration reloaded from {e.get('path') or 'flags'}",
        "model_loading": f"{model}: loading, tp {e.get('tp', '?')} x dp {e.get('dp', '?')} on {devices}",
        "model_ready": f"{model}: ready",
        "model_failed": f"{model}: FAILED: {e.get('error')}",
        "model_unloading": f"{model}: unloading" + (" (force)" if e.get("force") else ""),
        "model_unloaded": f"{model}: unloaded",
        "reconfigure_started": f"{model}: reshaping {_shape(e.get('from'))} -> {_shape(e.get('to'))}",
        "reconfigure_finished": f"{model}: now {_shape(e.get('to'))} after {_seconds(e.get('duration_s'))},"
                                f" requests held {_seconds(e.get('held_s'))}",
        "replica_starting": f"{replica}: starting, tp {e.get('tp', '?')} on {devices}",
        "replica_restarting": f"{replica}: restarting (attempt {e.get('attempt', '?')})",
        "replica_failed": f"{replica}: FAILED: {e.get('error')}",
        "replica_gave_up": f"{replica}: GAVE UP after {e.get('failures', '?')} failures: {e.get('error')}",
    }
    if kind in lines:
        return lines[kind]
    if kind.startswith("replica_"):
        return f"{replica}: {kind.removeprefix('replica_').replace('_', ' ')}"
    rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("kind", "time"))
    return f"{kind} {rest}".strip()


def describe(event: dict[str, Any]) -> Text | None:
    """The log line for `event`, or None for events the log leaves out."""
    kind = str(event.get("kind", "event"))
    if kind in QUIET:
        return None
    bad = kind in ("model_failed", "replica_failed", "replica_gave_up", "daemon_stopping")
    return Text(_text(kind, event), style="bold red" if bad else "")
