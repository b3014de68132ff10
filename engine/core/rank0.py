"""Rank 0's serving loop: requests in, scheduled steps out to every rank, tokens back."""

from __future__ import annotations

import pickle
import time
from typing import TYPE_CHECKING

import zmq

from mgpud.records import RankFigures

from .batch import build_step
from .kv import BlockManager
from .layers.logprobs import record_prompt_logprobs, sampled_logprobs
from .layers.sampler import sample
from .sampling import SamplingParams
from .scheduler import Limits, Scheduler
from .sequence import Sequence

if TYPE_CHECKING:
    from .worker import Worker

_IDLE_POLL_MS = 100


class Rank0Loop:
    def __init__(self, worker: Worker):
        a = worker.args
        self.worker = worker
        self.runner = worker.runner
        self.requests = worker.zmq.socket(zmq.PULL)
        self.requests.connect(a.endpoint("requests"))
        self.followers = []
        for rank in range(1, a.tp):
            sock = worker.zmq.socket(zmq.PUSH)
            sock.connect(a.endpoint(f"rank{rank}"))
            self.followers.append(sock)
        blocks = BlockManager(len(self.runner.caches[0][0]), a.config.block_size, a.config.enable_prefix_caching)
        limits = Limits(a.config.max_num_seqs, a.config.max_num_batched_tokens, a.max_model_len)
        self.scheduler = Scheduler(limits, blocks)
        self.block_size = a.config.block_size
        self.max_model_len = a.max_model_len
        self.prompt_tokens = 0
        self.generated_tokens = 0
        # Where step time goes: the forward pass versus everything around it.
        self.steps = 0
        self.step_seconds = 0.0
        self.forward_seconds = 0.0
        self.peak_running = 0
        self._idle_stats: RankFigures | None = None
        self.running = True

    def run(self) -> None:
        while self.running:
            busy = self.scheduler.has_work()
            started = time.perf_counter()
            self._receive(block=not busy)
            if self.running and self.scheduler.has_work():
                # A step's overhead includes taking in the requests that arrived during it.
                self._step(started if busy else time.perf_counter())
        for sock in self.followers:
            sock.send(pickle.dumps(("stop", None)))

    def _receive(self, block: bool) -> None:
        timeout = _IDLE_POLL_MS if block else 0
        while self.requests.poll(timeout):
            kind, body = pickle.loads(self.requests.recv())
            getattr(self, f"_on_{kind}")(**body)
            timeout = 0
        if block:
            self._send_stats()

    def _on_add(self, request_id: str, token_ids: list[int], params: SamplingParams,
                eos_ids: frozenset[int]) -> None:
        seq = Sequence(request_id, token_ids, len(token_ids), params, eos_ids)
        self.prompt_tokens += len(token_ids)
        self.scheduler.add(seq)

    def _on_cancel(self, request_id: str) -> None:
        self.scheduler.cancel(request_id)

    def _on_stop(self) -> None:
        self.running = False

    def _step(self, started: float) -> None:
        batch = self.scheduler.schedule()
        self.peak_running = max(self.peak_running, len(self.scheduler.running))
        step = build_step(batch, self.block_size)
        payload = pickle.dumps(("step", step), protocol=5)
        for sock in self.followers:
            sock.send(payload)
        forward = time.perf_counter()
        logits = self.runner.execute(step)
        self.runner.synchronize()  # CUDA returns before its kernels finish: time the work itself
        self.forward_seconds += time.perf_counter() - forward
        sampling = [seq for seq, n in batch if seq.num_computed_tokens + n == seq.num_tokens]
        tokens = sample(logits[:len(sampling)], sampling) if sampling else []
        logprobs = sampled_logprobs(logits, sampling, tokens) if sampling else []
        if len(step.prompt_logits_indices):
            record_prompt_logprobs(batch, logits[len(sampling):])
        now = time.monotonic()
        finished = {f.seq.request_id: f.reason for f in self.scheduler.update(batch, tokens)}
        outputs = []
        for seq, token, logprob in zip(sampling, tokens, logprobs):
            if seq.first_token_time is None:
                seq.first_token_time = now
            # Complete by the first sampled token (its prefill chunk is the last); sent once.
            prompt_logprobs, seq.prompt_logprobs = seq.prompt_logprobs, None
            outputs.append((seq.request_id, token, finished.get(seq.request_id),
                            seq.first_scheduled_time, seq.first_token_time, logprob, prompt_logprobs))
        self.generated_tokens += len(tokens)
        self.steps += 1
        self.step_seconds += time.perf_counter() - started
        self.worker.send("outputs", outputs=outputs, stats=self.stats(), step_tokens=step.num_tokens)

    def _send_stats(self) -> None:
        # Idle polls come 10 times a second: tell the owner only what changed (a cancel).
        stats = self.stats()
        if stats != self._idle_stats:
            self._idle_stats = stats
            self.worker.send("outputs", outputs=[], stats=stats, step_tokens=0)

    def stats(self) -> RankFigures:
        blocks = self.scheduler.blocks
        used, total = blocks.usage()
        routed, balanced = self.runner.expert_load()
        return RankFigures(running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
                           kv_blocks_used=used, kv_blocks_total=total, kv_blocks_touched=blocks.touched,
                           prefix_cache_queries=blocks.prefix_queries, prefix_cache_hits=blocks.prefix_hits,
                           preemptions=self.scheduler.num_preemptions, prompt_tokens_total=self.prompt_tokens,
                           generation_tokens_total=self.generated_tokens, steps_total=self.steps,
                           step_seconds_total=self.step_seconds, forward_seconds_total=self.forward_seconds,
                           peak_running=self.peak_running, expert_tokens_total=routed, expert_balance=balanced)
