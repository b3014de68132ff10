"""A model group: `dp` replicas of a `tp`-way sharded model on disjoint devices.

The group routes each request to a replica, re-queues the requests of a replica that
dies before they streamed anything, restarts dead replicas with backoff, and changes
shape while serving (`reconfigure`): new replicas start on free devices while the old
ones serve; where no device is free, an old replica drains first and new requests wait
in the group's queue until a replica of the new shape is ready.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from mgpud.records import COUNTERS, GAUGES, LoadProgress, ModelFigures, ReplicaFigures

from ..config import EngineConfig
from ..core.llm_engine import LLMEngine, ProgressFn, default_devices
from ..core.outputs import RequestOutput, RequestStream
from ..core.prepared import PreparedModel
from ..core.sampling import SamplingParams
from ..exceptions import EngineDead, EngineError, InvalidRequest
from ..planning.shapes import check_shape
from ..store.demo import resolve_model
from .pool import DevicePool
from .prompts import check_room, prompt_ids
from .replica import DRAINING, FAILED, READY, RESTARTING, STOPPED, Replica
from .request_metrics import ServingMetrics
from .router import Router

EventFn = Callable[[dict[str, Any]], None]
RESTART_BACKOFF = (1.0, 2.0, 4.0)  # seconds before restart attempts 1, 2, 3
RESTART_WINDOW = 300.0  # failures older than this are forgiven
_ids = itertools.count()


@dataclass(eq=False)
class _Request:
    id: str
    ids: list[int]
    params: SamplingParams
    sink: Callable[[RequestOutput], None]
    replica: Replica | None = None
    streamed: int = 0
    cancelled: bool = False


class ModelGroup:
    """The engine's front door: resolves and reads the model once, checks the shape, and
    validates and tokenizes each request once before a replica gets it.

    pool: the devices replicas may take (default: this machine's first tp x dp);
    devices: the exact devices to use, tp per replica, in order."""

    def __init__(self, config: EngineConfig, dp: int = 1, pool: DevicePool | None = None, name: str = "model",
                 devices: list[str] | None = None, progress: ProgressFn | None = None,
                 on_event: EventFn | None = None):
        config.check()
        self.name = name
        self.pool = pool or DevicePool(default_devices(config.tp * dp))
        self._on_event = on_event
        note = (lambda m: progress(LoadProgress("prepare", message=m))) if progress else None
        self.model = PreparedModel.open(resolve_model(config.model, note), config.max_model_len)
        self.config = dataclasses.replace(config, model=str(self.model.dir))
        check_shape(self.model.config, self.config, config.tp, dp, len(self.pool.free), self.model.max_model_len)
        self.router = Router(config.block_size)
        self.metrics = ServingMetrics()
        self.replicas: list[Replica] = []
        self._lock = threading.RLock()
        self._reconfiguring = threading.Lock()
        self._requests: dict[str, _Request] = {}
        self._held: deque[_Request] = deque()
        self._holding_since: float | None = None
        self._held_seconds = 0.0
        self._closed = threading.Event()
        self._next_index = itertools.count()
        # Counters of engines that are gone (retired or restarted), so totals never go back.
        self._past: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self._peaks: dict[tuple[int, str], list[int]] = {}  # (tp, device kind) -> each rank's activation peak
        try:
            self._start_replicas(dp, devices, progress)
        except BaseException:
            self.shutdown()
            raise

    # -- shape ------------------------------------------------------------------------

    @property
    def tp(self) -> int:
        return self.config.tp

    @property
    def dp(self) -> int:
        with self._lock:
            return sum(1 for r in self.replicas if r.state != STOPPED)

    def _event(self, kind: str, **fields: Any) -> None:
        if self._on_event:
            self._on_event({"kind": kind, "model": self.name, "time": time.time(), **fields})

    def _start_replicas(self, dp: int, devices: list[str] | None, progress: ProgressFn | None) -> None:
        """dp replicas loading side by side (a load mostly waits on its workers); the first
        one's progress is the group's. Raises the first failure once all have ended."""
        tp = self.config.tp
        reps = [self._reserve(tp, devices[i * tp:(i + 1) * tp] if devices else None) for i in range(dp)]
        with ThreadPoolExecutor(max_workers=dp, thread_name_prefix="mgpud-replica-start") as starts:
            loads = [starts.submit(self._load, rep, progress if i == 0 else None) for i, rep in enumerate(reps)]
        for load in loads:
            load.result()

    def _start_replica(self, tp: int, wanted: list[str] | None = None,
                       progress: ProgressFn | None = None) -> Replica:
        rep = self._reserve(tp, wanted)
        self._load(rep, progress)
        return rep

    def _reserve(self, tp: int, wanted: list[str] | None) -> Replica:
        """A replica on its devices (taken from the pool), not started yet."""
        devices = self.pool.take(tp, wanted)
        rep = Replica(next(self._next_index), devices, tp)
        with self._lock:
            self.replicas.append(rep)
        self._event("replica_starting", replica=rep.index, devices=devices, tp=tp)
        return rep

    def _load(self, rep: Replica, progress: ProgressFn | None) -> None:
        try:
            rep.engine = self._engine(rep, progress)
        except BaseException:
            with self._lock:
                self.replicas.remove(rep)
            self.pool.give(rep.devices)
            raise
        self._mark_ready(rep)

    def _engine(self, rep: Replica, progress: ProgressFn | None = None) -> LLMEngine:
        # A replica of a shape already loaded takes its activation peaks: the same forward on
        # the same kind of device measures the same, and the profile is most of a load's time.
        shape = (rep.tp, rep.devices[0].split(":")[0])
        with self._lock:
            peaks = self._peaks.get(shape)
        engine = LLMEngine(self.model, dataclasses.replace(self.config, tp=rep.tp), rep.devices, progress,
                           on_failure=partial(self._mark_failed, rep), workers=self.pool.workers,
                           measured_peaks=peaks)
        with self._lock:
            self._peaks.setdefault(shape, engine.info.peak_activation_bytes_per_rank)
        return engine

    def _mark_ready(self, rep: Replica) -> None:
        with self._lock:
            rep.state = READY
            held = list(self._held)
            self._held.clear()
            if self._holding_since is not None:
                self._held_seconds += time.monotonic() - self._holding_since
                self._holding_since = None
        self._event("replica_ready", replica=rep.index, devices=rep.devices, tp=rep.tp,
                    pids=rep.engine.info.pids)
        for req in held:
            self._dispatch_or_fail(req)

    # -- requests ---------------------------------------------------------------------

    def add_request(self, prompt: str | list[int] | None = None, *,
                    messages: list[dict[str, Any]] | None = None, params: SamplingParams | None = None,
                    on_output: Callable[[RequestOutput], None]) -> str:
        """Queue one request (exactly one of prompt and messages); outputs go to on_output
        on an engine thread. Returns the request id; raises InvalidRequest or EngineError."""
        params = params or SamplingParams()
        if problem := params.vocabulary_problem(self.model.config.vocab_size):
            raise InvalidRequest(problem)
        ids = prompt_ids(self.model, prompt, messages)
        check_room(params, len(ids), self.model.max_model_len)
        req = _Request(f"{self.name}-{next(_ids)}-{uuid.uuid4().hex[:8]}", ids, params, on_output)
        with self._lock:
            if self._closed.is_set():
                raise EngineError(f"model {self.name} is shutting down")
            self._requests[req.id] = req
        try:
            self._dispatch(req)
        except EngineError:
            with self._lock:
                self._requests.pop(req.id, None)
            raise
        return req.id

    def stream(self, prompt: str | list[int] | None = None, *, messages: list[dict[str, Any]] | None = None,
               params: SamplingParams | None = None) -> RequestStream:
        """add_request, with the outputs to iterate."""
        stream = RequestStream()
        stream.request_id = self.add_request(prompt, messages=messages, params=params, on_output=stream.put)
        return stream

    def _dispatch(self, req: _Request) -> None:
        """Hand req to a ready replica, or hold it while a reconfigure has none ready."""
        while True:
            with self._lock:
                ready = [r for r in self.replicas if r.state == READY]
                if not ready:
                    if self._reconfiguring.locked():
                        if self._holding_since is None:
                            self._holding_since = time.monotonic()
                        self._held.append(req)
                        return
                    errors = "; ".join(f"replica {r.index}: {r.last_error}" for r in self.replicas if r.last_error)
                    raise EngineDead(f"model {self.name} has no healthy replica" + (f" ({errors})" if errors else ""))
                rep = self.router.pick(ready, req.ids)
                rep.inflight.add(req.id)
                req.replica = rep
            try:
                rep.engine.add_request(req.id, req.ids, req.params, partial(self._on_output, req, rep))
                return
            except EngineError as exc:
                rep.finished(req.id)
                self._mark_failed(rep, str(exc))

    def _dispatch_or_fail(self, req: _Request) -> None:
        try:
            self._dispatch(req)
        except EngineError as exc:
            self._deliver(req, None, RequestOutput(req.id, finished=True, finish_reason="replica_failed",
                                                   error=str(exc), prompt_tokens=len(req.ids)))

    def _on_output(self, req: _Request, rep: Replica, out: RequestOutput) -> None:
        if out.finish_reason == "error" and rep.engine is not None and not rep.engine.alive:
            self._mark_failed(rep, out.error or "replica failed")
            rep.finished(req.id)
            if req.streamed == 0 and not req.cancelled:
                self._dispatch_or_fail(req)  # nothing reached the client: try another replica
                return
            out.finish_reason = "replica_failed"
            out.error = f"replica {rep.index} failed: {out.error}"
        req.streamed += len(out.new_token_ids)
        self._deliver(req, rep, out)

    def _deliver(self, req: _Request, rep: Replica | None, out: RequestOutput) -> None:
        if rep is not None:
            rep.metrics.on_output(out)
        self.metrics.on_output(out)
        if out.finished:
            with self._lock:
                self._requests.pop(req.id, None)
            if rep is not None:
                rep.finished(req.id)
        req.sink(out)

    def cancel(self, request_id: str) -> bool:
        with self._lock:
            req = self._requests.get(request_id)
            if req is None:
                return False
            req.cancelled = True
            held = req in self._held
            if held:
                self._held.remove(req)
        if held or req.replica is None or not req.replica.engine.cancel(request_id):
            self._deliver(req, req.replica, RequestOutput(request_id, finished=True, finish_reason="cancelled",
                                                          prompt_tokens=len(req.ids)))
        return True

    def generate(self, prompts: list[str | list[int]], params: SamplingParams | None = None
                 ) -> list[tuple[list[int], str, RequestOutput]]:
        """Blocking convenience: run prompts together, return (ids, text, final) for each."""
        streams = [self.stream(p, params=params) for p in prompts]
        return [s.result() for s in streams]

    # -- failures ---------------------------------------------------------------------

    def _mark_failed(self, rep: Replica, reason: str) -> bool:
        """Record a replica's death once; returns whether this call recorded it."""
        with self._lock:
            if rep.state in (FAILED, STOPPED, RESTARTING):
                return False
            retiring = rep.state == DRAINING
            rep.state, rep.last_error = FAILED, reason
            rep.failures.append(time.monotonic())
        self._event("replica_failed", replica=rep.index, error=reason)
        if not retiring and not self._closed.is_set():
            threading.Thread(target=self._restart, args=(rep,), name=f"mgpud-restart-{rep.index}",
                             daemon=True).start()
        return True

    def _restart(self, rep: Replica) -> None:
        while True:
            recent = [t for t in rep.failures if t > time.monotonic() - RESTART_WINDOW]
            if len(recent) > len(RESTART_BACKOFF):
                self._event("replica_gave_up", replica=rep.index, failures=len(recent), error=rep.last_error)
                return
            if self._closed.wait(RESTART_BACKOFF[len(recent) - 1]):
                return
            with self._lock:
                if rep.state != FAILED:
                    return
                rep.state = RESTARTING
            old, rep.engine = rep.engine, None
            if old is not None:
                self._keep_counters(old)
                old.shutdown()
            self._event("replica_restarting", replica=rep.index, attempt=len(recent))
            try:
                rep.engine = self._engine(rep)
            except Exception as exc:  # noqa: BLE001 - a failed restart counts as one more failure
                with self._lock:
                    rep.state, rep.last_error = FAILED, str(exc)
                    rep.failures.append(time.monotonic())
                self._event("replica_failed", replica=rep.index, error=str(exc))
                continue
            self._mark_ready(rep)
            return

    # -- reshaping --------------------------------------------------------------------

    def reconfigure(self, tp: int, dp: int, progress: ProgressFn | None = None,
                    expert_parallel: bool | None = None) -> dict[str, Any]:
        """Change to tp x dp (and, for a MoE model, the expert placement unless None) while
        serving; returns how long it took and requests were held."""
        with self._reconfiguring:
            with self._lock:
                live = [r for r in self.replicas if r.state != STOPPED]
            mine = sum(len(r.devices) for r in live)
            ep = self.config.enable_expert_parallel if expert_parallel is None else expert_parallel
            target = dataclasses.replace(self.config, tp=tp, enable_expert_parallel=ep)
            check_shape(self.model.config, target, tp, dp, len(self.pool.free) + mine, self.model.max_model_len)
            before = {"tp": self.tp, "dp": len(live)}
            start, held_before = time.monotonic(), self._held_seconds
            self._event("reconfigure_started", **{"from": before, "to": {"tp": tp, "dp": dp}})
            placed = ep == self.config.enable_expert_parallel  # a new placement restarts every replica
            keep = [r for r in live if r.tp == tp and r.state == READY and placed][:dp]
            retire = sorted((r for r in live if r not in keep), key=lambda r: (r.state == READY, r.load()))
            self.config = target
            for _ in range(dp - len(keep)):
                while len(self.pool.free) < tp:
                    self._retire(retire.pop(0))
                self._start_replica(tp, progress=progress)
            for rep in retire:
                self._retire(rep)
            report = {"from": before, "to": {"tp": tp, "dp": dp},
                      "duration_s": time.monotonic() - start, "held_s": self._held_seconds - held_before}
        self._event("reconfigure_finished", **report)
        return report

    def _retire(self, rep: Replica) -> None:
        """Stop routing to rep, let it finish what it holds, stop it, free its devices."""
        with self._lock:
            rep.state = DRAINING if rep.state == READY else rep.state
        self._event("replica_draining", replica=rep.index)
        rep.wait_drained()
        if rep.engine is not None:
            self._keep_counters(rep.engine)
            rep.engine.shutdown()
        with self._lock:
            rep.state = STOPPED
            self.replicas.remove(rep)
        self.pool.give(rep.devices)
        self._event("replica_stopped", replica=rep.index)

    # -- figures ----------------------------------------------------------------------

    def _keep_counters(self, engine: LLMEngine) -> None:
        stats = engine.stats()
        with self._lock:
            for key in COUNTERS:
                self._past[key] += getattr(stats, key)

    def stats(self) -> ModelFigures:
        with self._lock:
            replicas = [r.figures() for r in self.replicas]
            held = len(self._held)
            past = dict(self._past)
        totals = {key: sum(getattr(r, key) for r in replicas) for key in GAUGES}
        totals |= {key: past[key] + sum(getattr(r, key) for r in replicas) for key in COUNTERS}
        totals["waiting"] += held
        states = {r.state for r in replicas}
        state = READY if states == {READY} else (FAILED if not states or states <= {FAILED} else "degraded")
        if self._reconfiguring.locked():
            state = "reconfiguring"
        return ModelFigures(**totals, **vars(self.metrics.snapshot()), name=self.name, tp=self.tp,
                            dp=len(replicas), state=state, max_model_len=self.model.max_model_len, held=held,
                            peak_running=max((r.peak_running for r in replicas), default=0),
                            expert_balance=_expert_balance(replicas), replicas=replicas,
                            expert_parallel=self.config.enable_expert_parallel)

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            replicas = list(self.replicas)
            held = list(self._held)
            self._held.clear()
        for req in held:
            self._deliver(req, None, RequestOutput(req.id, finished=True, finish_reason="cancelled"))
        for rep in replicas:
            if rep.engine is not None:
                rep.engine.shutdown()
            rep.state = STOPPED
            self.pool.give(rep.devices)
        with self._lock:
            self.replicas.clear()

    def __enter__(self) -> ModelGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _expert_balance(replicas: list[ReplicaFigures]) -> float | None:
    """The replicas' balance figures weighted by the tokens each routed."""
    counted = [r for r in replicas if r.expert_balance is not None and r.expert_tokens_total]
    tokens = sum(r.expert_tokens_total for r in counted)
    return sum(r.expert_balance * r.expert_tokens_total for r in counted) / tokens if tokens else None
