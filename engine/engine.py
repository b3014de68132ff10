"""LLMEngine: one replica, driven from its owner process (see docs/engine-api.md).

The owner spawns one worker process per device, tokenizes, and turns rank 0's token
stream into text; it never runs model math. Sockets and the rendezvous file live in a
private directory per engine, so replicas and models never collide.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from collections.abc import Callable

import zmq

from .config import EngineConfig, ModelConfig
from .demo import resolve_model
from .errors import EngineDead, EngineError, InvalidRequest, ModelLoadError
from .loader import LoadProgress, checkpoint_files
from .prompts import prompt_ids
from .outputs import RequestOutput, RequestState, RequestStream
from .sampling import SamplingParams
from .tokenizer import Tokenizer
from .worker import WorkerArgs

ProgressFn = Callable[[LoadProgress], None]
_ids = itertools.count()
_SEND_TIMEOUT_MS = 2000


def default_devices(tp: int) -> list[str]:
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(tp)]
    return [f"cpu:{i}" for i in range(tp)]


class LLMEngine:
    def __init__(self, config: EngineConfig, progress: ProgressFn | None = None,
                 on_failure: Callable[[str], None] | None = None):
        config.check()
        self._on_failure = on_failure
        self.config = config
        self.model_dir = resolve_model(config.model, (lambda m: progress(LoadProgress("prepare", message=m)))
                                       if progress else None)
        self.model_config = ModelConfig.from_dir(self.model_dir)
        self.model_config.check_supported()
        self.model_config.check_tp(config.tp)
        checkpoint_files(self.model_dir)
        self.tokenizer = Tokenizer(self.model_dir)
        self.max_model_len = self.model_config.resolve_max_model_len(config.max_model_len)
        self.devices = config.devices or default_devices(config.tp)
        if len(self.devices) != config.tp:
            raise ModelLoadError(f"tp={config.tp} needs {config.tp} devices, got {len(self.devices)}: {self.devices}")
        self._requests: dict[str, RequestState] = {}
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._failed = threading.Event()
        self._closing = False
        self._stats: dict[str, Any] = {}
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
        self._receiver = threading.Thread(target=self._receive_loop, name="mgpud-engine-rx", daemon=True)
        self._receiver.start()
        for proc in self._procs:
            threading.Thread(target=self._watch, args=(proc,), daemon=True).start()

    # -- start-up ---------------------------------------------------------------------

    def _dtype(self) -> str:
        return self.config.dtype_name(on_cuda=self.devices[0].startswith("cuda"))

    def _spawn(self) -> None:
        c = self.config
        cores = os.cpu_count() or 1
        for rank, device in enumerate(self.devices):
            args = WorkerArgs(rank, c.tp, device, str(self.model_dir), self._dtype(), self.max_model_len,
                              c.block_size, c.max_num_seqs, c.max_num_batched_tokens, c.memory_utilization,
                              c.device_memory, c.kv_cache_memory, c.threads_per_device or max(1, cores // c.tp),
                              c.enable_prefix_caching, self._run_dir)
            args_file = Path(self._run_dir) / f"rank{rank}.args"
            args_file.write_bytes(pickle.dumps(args))
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            # A session of their own: a Ctrl-C meant for the owner must not kill the workers
            # mid-step; the owner stops them, and they exit by themselves if it dies.
            self._procs.append(subprocess.Popen(
                [sys.executable, "-c", "import sys; from mgpud.engine.worker import main; main(sys.argv[1])",
                 str(args_file)], env=env, start_new_session=True))

    def _wait_ready(self, progress: ProgressFn | None) -> dict[str, Any]:
        ready: dict[int, dict] = {}
        while len(ready) < len(self._procs):
            if not self._inbox.poll(200):
                dead = [p for p in self._procs if p.poll() is not None]
                if dead and not self._inbox.poll(500):
                    raise EngineError(f"worker pid {dead[0].pid} exited with code {dead[0].returncode} "
                                      "while loading; see its stderr")
                continue
            kind, body = pickle.loads(self._inbox.recv())
            if kind == "progress" and progress:
                progress(body["progress"])
            elif kind == "ready":
                ready[body["rank"]] = body
            elif kind == "error":
                raise ModelLoadError(f"rank {body['rank']}: {body['error']}")
        r0 = ready[0]
        if progress:
            progress(LoadProgress("ready", message="ready"))
        return {
            "model": self.config.model, "model_dir": str(self.model_dir),
            "architecture": self.model_config.architecture, "tp": self.config.tp,
            "devices": self.devices, "pids": [ready[r]["pid"] for r in sorted(ready)],
            "dtype": self._dtype(), "max_model_len": self.max_model_len,
            "block_size": self.config.block_size, "num_kv_blocks": r0["num_blocks"],
            "kv_bytes_per_rank": r0["kv_bytes"],
            "weight_bytes_per_rank": [ready[r]["weight_bytes"] for r in sorted(ready)],
            "peak_activation_bytes_per_rank": [ready[r]["peak_activation_bytes"] for r in sorted(ready)],
        }

    # -- requests ---------------------------------------------------------------------

    def add_request(self, prompt: str | list[int] | None = None, *,
                    messages: list[dict[str, Any]] | None = None,
                    params: SamplingParams | None = None, request_id: str | None = None,
                    on_output: Callable[[RequestOutput], None] | None = None) -> RequestStream:
        params = params or SamplingParams()
        params.check(self.model_config.vocab_size)
        ids = prompt_ids(self.tokenizer, self.model_config.vocab_size, self.max_model_len, prompt, messages)
        request_id = request_id or f"req-{next(_ids)}-{uuid.uuid4().hex[:8]}"
        stream = RequestStream(request_id)
        state = RequestState(request_id, ids, params, self.tokenizer.detokenizer(ids), on_output or stream.put)
        with self._lock:
            if self._dead:
                raise EngineDead(f"replica is down: {self._dead}")
            if self._closing:
                raise EngineError("engine is shutting down")
            if request_id in self._requests:
                raise InvalidRequest(f"request id {request_id!r} is already in use")
            self._requests[request_id] = state
            self._send("add", request_id=request_id, token_ids=ids, params=params.to_dict(),
                       eos_ids=sorted(self.tokenizer.eos_ids))
        return stream

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

    def generate(self, prompts: list[str | list[int]], params: SamplingParams | None = None
                 ) -> list[tuple[list[int], str, RequestOutput]]:
        """Blocking convenience: run prompts together, return (ids, text, final) for each."""
        streams = [self.add_request(p, params=params) for p in prompts]
        return [s.result() for s in streams]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._stats)

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
        for state, rid, token, reason, scheduled, first, top in states:
            if state is None:
                continue  # cancelled while this step ran
            if reason:
                with self._lock:
                    self._requests.pop(rid, None)
            if state.on_token(token, reason, scheduled, first, top) == "stop" and not reason:
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
