"""One replica of a model group: an engine on its own devices, its state and its load."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from mgpud.records import RankFigures, ReplicaFigures

from ..core.llm_engine import LLMEngine
from .request_metrics import ServingMetrics

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
        stats = self.engine.stats() if self.engine else None
        kv = stats.kv_blocks_used / stats.kv_blocks_total if stats and stats.kv_blocks_total else 0.0
        return len(self.inflight) + kv

    def finished(self, request_id: str) -> None:
        with self.drained:
            self.inflight.discard(request_id)
            if not self.inflight:
                self.drained.notify_all()

    def wait_drained(self) -> None:
        with self.drained:
            self.drained.wait_for(lambda: not self.inflight)

    def figures(self) -> ReplicaFigures:
        engine = self.engine
        counted = engine.stats() if engine and engine.alive else RankFigures()
        fig = ReplicaFigures(**vars(counted), **vars(self.metrics.snapshot()), index=self.index, state=self.state,
                             devices=self.devices, tp=self.tp, inflight=len(self.inflight), error=self.last_error)
        if engine is not None:
            info = engine.info
            fig.pids, fig.dtype, fig.num_kv_blocks = info.pids, info.dtype, info.num_kv_blocks
            fig.quantization, fig.kv_cache_dtype = info.quantization, info.kv_cache_dtype
            fig.kv_bytes_per_rank, fig.weight_bytes_per_rank = info.kv_bytes_per_rank, info.weight_bytes_per_rank
            fig.peak_activation_bytes_per_rank = info.peak_activation_bytes_per_rank
            fig.graph_bytes_per_rank = info.graph_bytes_per_rank
            fig.block_size, fig.max_model_len = engine.config.block_size, engine.model.max_model_len
        return fig
