"""LLMEngine: one replica, driven from its owner process (see docs/engine-api.md).

The owner spawns one worker process per device and turns rank 0's token stream into
text (detokenizing, stop strings); it never runs model math and never re-checks a
request: the serving layer (engine/serving/group.py) prepared it. Sockets and the rendezvous file live in a
private directory per engine, so replicas and models never collide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from mgpud.records import LoadProgress, RankFigures

from ..config import EngineConfig
from ..exceptions import EngineDead, EngineError, ModelLoadError
from .outputs import RequestOutput, RequestState
from .prepared import PreparedModel
from .sampling import SamplingParams
from .warm import WarmPool, start_worker
from .worker import WorkerArgs

ProgressFn = Callable[[LoadProgress], None]
_SEND_TIMEOUT_MS = 2000


def default_devices(count: int) -> list[str]:
    """The first `count` devices of this machine: CUDA GPUs, else CPU virtual devices."""
    import torch

    kind = "cuda" if torch.cuda.is_available() else "cpu"
    return [f"{kind}:{i}" for i in range(count)]


@dataclass(frozen=True)
class EngineInfo:
    """What the ranks of a replica reported once loaded."""

    pids: list[int]  # one per rank
    dtype: str
    quantization: str | None  # the linear layers' when 8-bit
    kv_cache_dtype: str  # e.g. float8_e4m3fn, bfloat16
    num_kv_blocks: int
    kv_bytes_per_rank: int
    weight_bytes_per_rank: list[int]
    peak_activation_bytes_per_rank: list[int]
    graph_bytes_per_rank: list[int]


class _Phases:
    """Rank 0's progress passed on, with the seconds each phase took, timed as they change."""

    def __init__(self, progress: ProgressFn | None):
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.phase: str | None = None
        self.since = time.monotonic()

    def report(self, p: LoadProgress) -> None:
        if p.phase != self.phase:
            now = time.monotonic()
            if self.phase is not None:
                self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + now - self.since
            self.phase, self.since = p.phase, now
        if self.progress:
            self.progress(dataclasses.replace(p, seconds=dict(self.seconds)))


class LLMEngine:
    """One replica on `devices` (one rank each). Requests arrive prepared by the serving
    layer: token ids within the model's limits and checked sampling parameters."""

    def __init__(self, model: PreparedModel, config: EngineConfig, devices: list[str],
                 progress: ProgressFn | None = None, on_failure: Callable[[str], None] | None = None,
                 workers: WarmPool | None = None, measured_peaks: list[int] | None = None):
        """measured_peaks: each rank's activation peak, as a replica of the same shape
        measured it (EngineInfo.peak_activation_bytes_per_rank), so that none is profiled."""
        self._on_failure = on_failure
        self._workers = workers
        self._measured_peaks = measured_peaks
        self.model = model
        self.config = config
        self.devices = devices
        self._requests: dict[str, RequestState] = {}
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._failed = threading.Event()
        self._closing = False
        self._stats = RankFigures()
        self._run_dir = tempfile.mkdtemp(prefix="mgpud-replica-")
        self._zmq = zmq.Context()
        self._inbox = self._zmq.socket(zmq.PULL)
        self._inbox.bind(f"ipc://{self._run_dir}/owner.sock")
        self._outbox = self._zmq.socket(zmq.PUSH)
        # A PUSH with no live peer blocks forever; a dead rank 0 must not hang callers.
        self._outbox.setsockopt(zmq.SNDTIMEO, _SEND_TIMEOUT_MS)
        self._outbox.bind(f"ipc://{self._run_dir}/requests.sock")
        self._procs: list[subprocess.Popen] = []
        try:
            self._spawn()
            self.info = self._wait_ready(progress)
        except BaseException:
            self._teardown()
            raise
        finally:
            if workers:
                workers.refill()
        self._receiver = threading.Thread(target=self._receive_loop, name="mgpud-engine-rx", daemon=True)
        self._receiver.start()
        for proc in self._procs:
            threading.Thread(target=self._watch, args=(proc,), daemon=True).start()

    # -- start-up ---------------------------------------------------------------------

    def _spawn(self) -> None:
        c, tp = self.config, len(self.devices)
        threads = c.threads_per_device or max(1, (os.cpu_count() or 1) // tp)
        dtype = c.dtype_name(on_cuda=self.devices[0].startswith("cuda"))
        quantization = self.model.config.weight_quantization(c.quantization)  # refused here, before any spawn
        for rank, device in enumerate(self.devices):
            args = WorkerArgs(rank=rank, tp=tp, device=device, model_dir=str(self.model.dir),
                              model=self.model.config, max_model_len=self.model.max_model_len,
                              dtype=dtype, quantization=quantization, threads=threads, config=c, run_dir=self._run_dir,
                              measured_peak=self._measured_peaks[rank] if self._measured_peaks else None)
            args_file = Path(self._run_dir) / f"rank{rank}.args"
            args_file.write_bytes(pickle.dumps(args))
            start = self._workers.start if self._workers else start_worker
            self._procs.append(start(str(args_file)))

    def _wait_ready(self, progress: ProgressFn | None) -> EngineInfo:
        phases = _Phases(progress)
        phases.report(LoadProgress("start", message=f"starting {len(self._procs)} worker(s)"))
        ready: dict[int, dict] = {}
        while len(ready) < len(self._procs):
            if not self._inbox.poll(200):
                dead = [p for p in self._procs if p.poll() is not None]
                if dead and not self._inbox.poll(500):
                    raise EngineError(f"worker pid {dead[0].pid} exited with code {dead[0].returncode} "
                                      "while loading; see its stderr")
                continue
            kind, body = pickle.loads(self._inbox.recv())
            if kind == "progress":
                phases.report(body["progress"])
            elif kind == "ready":
                ready[body["rank"]] = body
            elif kind == "error":
                raise ModelLoadError(f"rank {body['rank']}: {body['error']}")
        phases.report(LoadProgress("ready", message="ready"))
        ranks = [ready[r] for r in sorted(ready)]
        return EngineInfo(pids=[r["pid"] for r in ranks], dtype=ranks[0]["dtype"],
                          quantization=ranks[0]["quantization"], kv_cache_dtype=ranks[0]["kv_cache_dtype"],
                          num_kv_blocks=ranks[0]["num_blocks"], kv_bytes_per_rank=ranks[0]["kv_bytes"],
                          weight_bytes_per_rank=[r["weight_bytes"] for r in ranks],
                          peak_activation_bytes_per_rank=[r["peak_activation_bytes"] for r in ranks],
                          graph_bytes_per_rank=[r["graph_bytes"] for r in ranks])

    # -- requests ---------------------------------------------------------------------

    def add_request(self, request_id: str, token_ids: list[int], params: SamplingParams,
                    on_output: Callable[[RequestOutput], None]) -> None:
        """Queue a prepared request (unique id, ids within the model's limits); raises
        EngineDead or EngineError when this replica cannot take it."""
        state = RequestState(request_id, token_ids, params, self.model.tokenizer.detokenizer(token_ids), on_output)
        with self._lock:
            if self._dead:
                raise EngineDead(f"replica is down: {self._dead}")
            if self._closing:
                raise EngineError("engine is shutting down")
            self._requests[request_id] = state
            self._send("add", request_id=request_id, token_ids=token_ids, params=params,
                       eos_ids=self.model.tokenizer.eos_ids)

    def cancel(self, request_id: str) -> bool:
        state = self._drop(request_id)
        if state is None:
            return False
        state.finish("cancelled")
        return True

    def _drop(self, request_id: str) -> RequestState | None:
        """Forget a request here and free its blocks on rank 0."""
        with self._lock:
            state = self._requests.pop(request_id, None)
            if state is not None:
                self._send("cancel", request_id=request_id)
        return state

    def stats(self) -> RankFigures:
        """Rank 0's latest figures (a copy)."""
        with self._lock:
            return dataclasses.replace(self._stats)

    def _send(self, kind: str, **body: Any) -> None:
        try:
            self._outbox.send(pickle.dumps((kind, body), protocol=5))
        except zmq.Again:
            raise EngineDead("rank 0 is not taking requests (no reply within 2 s)") from None

    # -- rank 0's stream --------------------------------------------------------------

    def _receive_loop(self) -> None:
        while not self._closing:
            if not self._inbox.poll(100):
                continue
            kind, body = pickle.loads(self._inbox.recv())
            if kind == "outputs":
                self._on_outputs(body)
            elif kind == "error":
                self._fail(f"rank {body['rank']} failed: {body['error']}")

    def _on_outputs(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._stats = body["stats"]
            states = [(self._requests.get(out[0]), *out) for out in body["outputs"]]
        for state, rid, token, reason, scheduled, first, logprob, prompt_logprobs in states:
            if state is None:
                continue  # cancelled while this step ran
            if reason:
                with self._lock:
                    self._requests.pop(rid, None)
            if state.on_token(token, reason, scheduled, first, logprob, prompt_logprobs) == "stop" and not reason:
                self._drop(rid)  # a stop string ended it here: rank 0 need not go on

    def _watch(self, proc: subprocess.Popen) -> None:
        code = proc.wait()
        # A rank that failed on its own reports why just before exiting; prefer that text.
        if not self._closing and not self._failed.wait(1.0):
            self._fail(f"worker pid {proc.pid} exited with code {code}")

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._dead:
                return
            self._dead = reason
            self._failed.set()
            pending = list(self._requests.values())
            self._requests.clear()
        for state in pending:
            state.finish("error", reason)
        self._kill_workers()
        if self._on_failure:
            self._on_failure(reason)

    @property
    def alive(self) -> bool:
        return self._dead is None and not self._closing

    # -- shutdown ---------------------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            pending = list(self._requests.values())
            self._requests.clear()
        for state in pending:
            state.finish("cancelled")
        if self._dead is None:
            with contextlib.suppress(EngineDead):
                self._send("stop")
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        self._teardown()

    def _kill_workers(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            proc.wait()

    def _teardown(self) -> None:
        self._closing = True
        self._kill_workers()
        if hasattr(self, "_receiver"):
            self._receiver.join()
        self._inbox.close(linger=0)
        self._outbox.close(linger=0)
        self._zmq.term()
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
