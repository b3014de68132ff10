"""One replica of a model group: an engine on its own devices, its state and its load."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .engine import LLMEngine
from .metrics import ServingMetrics

# Replica states, as operators see them.
STARTING, READY, DRAINING, FAILED, RESTARTING, STOPPED = (
    "starting", "ready", "draining", "failed", "restarting", "stopped")


@dataclass(eq=False)
class Replica:
    index: int
    devices: list[str]
    tp: int
    state: str = STARTING
    engine: LLMEngine | None = None
    inflight: set[str] = field(default_factory=set)
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    failures: list[float] = field(default_factory=list)  # monotonic times of recent failures
    last_error: str | None = None
    drained: threading.Condition = field(default_factory=threading.Condition)

    def load(self) -> float:
        """Requests in flight, plus the KV cache's fill (0-1) to break ties."""
        stats = self.engine.stats() if self.engine else {}
        kv = stats.get("kv_blocks_used", 0) / max(1, stats.get("kv_blocks_total", 1))
        return len(self.inflight) + kv

    def finished(self, request_id: str) -> None:
        with self.drained:
            self.inflight.discard(request_id)
            if not self.inflight:
                self.drained.notify_all()

    def wait_drained(self) -> None:
        with self.drained:
            self.drained.wait_for(lambda: not self.inflight)

    def describe(self) -> dict[str, Any]:
        stats = self.engine.stats() if self.engine and self.engine.alive else {}
        info = self.engine.info if self.engine else {}
        return {"index": self.index, "state": self.state, "devices": self.devices, "tp": self.tp,
                "pids": info.get("pids", []), "inflight": len(self.inflight), "error": self.last_error,
                "num_kv_blocks": info.get("num_kv_blocks"), "block_size": info.get("block_size"),
                "dtype": info.get("dtype"), "max_model_len": info.get("max_model_len"), "kv_bytes_per_rank": info.get("kv_bytes_per_rank"),
                "weight_bytes_per_rank": info.get("weight_bytes_per_rank"),
                "peak_activation_bytes_per_rank": info.get("peak_activation_bytes_per_rank"),
                **stats, **self.metrics.snapshot()}
