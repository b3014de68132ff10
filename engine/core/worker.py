"""A rank's process, started by the engine with `main(ARGS_FILE)`.

Every rank loads its shard, profiles, and agrees on the KV size with the others. Then
rank 0 serves: it takes requests from the owner, schedules, sends each step's plan to
the other ranks, samples and streams tokens back; the other ranks run the steps they
are sent. Any error is reported to the owner before the process exits, and a rank
exits by itself when its owner is gone.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import zmq

from mgpud.records import LoadProgress

from ..config import EngineConfig, ModelConfig, cpu_kv_blocks_cap
from ..hosts.inventory import pin_cpu_device


@dataclass(frozen=True)
class WorkerArgs:
    """What a rank is started with (pickled into a file its command line names)."""

    rank: int
    tp: int
    device: str
    model_dir: str
    model: ModelConfig  # read once by the serving layer
    max_model_len: int
    dtype: str
    quantization: str | None  # the linear layers' (ModelConfig.weight_quantization)
    threads: int
    config: EngineConfig  # the replica's limits: block size, batch sizes, memory budget
    run_dir: str  # private to this replica: sockets and the rendezvous file
    # this rank's activation peak as a replica of the same shape measured it: no profile to run
    measured_peak: int | None = None

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.run_dir}/{name}.sock"


_run_dir: str | None = None  # this rank's replica directory, once it has one


def _die_with_owner(owner_pid: int) -> None:
    # PR_SET_PDEATHSIG follows the spawning *thread*, not the process; polling the parent
    # pid is what reliably notices the owner's death, kill -9 included. The owner can no
    # longer clean up its replica directory, so the first rank to notice does.
    while os.getppid() == owner_pid:
        time.sleep(0.2)
    if _run_dir is not None:
        shutil.rmtree(_run_dir, ignore_errors=True)
    os._exit(1)


class Worker:
    def __init__(self, args: WorkerArgs):
        import torch

        self.args = args
        self.zmq = zmq.Context()
        self.owner = self.zmq.socket(zmq.PUSH)
        self.owner.connect(args.endpoint("owner"))
        torch.set_num_threads(args.threads)
        # CPU virtual devices are slots of our own; torch sees one CPU device.
        self.device = torch.device("cpu" if args.device.startswith("cpu") else args.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def send(self, kind: str, **fields) -> None:
        self.owner.send(pickle.dumps((kind, fields), protocol=5))

    def start(self) -> None:
        from .memory import rss
        from .model_runner import ModelRunner
        from .parallel import TPGroup

        a = self.args
        self.group = TPGroup(a.rank, a.tp)
        if a.tp > 1:
            self._init_distributed()
        progress = self._progress if a.rank == 0 else None
        if progress:
            self.send("progress", progress=LoadProgress("load", message="reading weights"))
        self.runner = ModelRunner(a.model, Path(a.model_dir), self.group, self.device, a.dtype,
                                  a.max_model_len, a.config.block_size, progress,
                                  a.config.enable_expert_parallel, a.quantization, a.config.kv_cache_dtype)
        graphs = self.device.type == "cuda" and not a.config.enforce_eager
        peak = graph_reserve = 0  # an explicit KV budget needs no measurement (and saves a forward)
        resident = rss()
        if a.config.kv_cache_memory is None:
            peak = a.measured_peak if a.measured_peak is not None else self._profile()
            if graphs:
                graph_reserve = self.runner.profile_graphs(a.config.max_num_seqs)
        num_blocks = self._agree_on_blocks(peak + graph_reserve, resident)
        if a.rank == 0:
            self.send("progress", progress=LoadProgress("kv", message=f"allocating {num_blocks} KV blocks"))
        self.runner.allocate_kv(num_blocks)
        graph_bytes = 0
        if graphs:
            if a.rank == 0:
                self.send("progress", progress=LoadProgress("profile", message="capturing CUDA graphs"))
            graph_bytes = self.runner.capture_graphs(a.config.max_num_seqs)
        self.send("ready", rank=a.rank, pid=os.getpid(), dtype=a.dtype, quantization=a.quantization,
                  kv_cache_dtype=str(self.runner.kv_dtype).removeprefix("torch."),
                  weight_bytes=self.runner.weight_bytes,
                  peak_activation_bytes=peak, graph_bytes=graph_bytes, num_blocks=num_blocks,
                  kv_bytes=num_blocks * self.runner.kv_block_bytes)

    def _profile(self) -> int:
        if self.args.rank == 0:
            self.send("progress", progress=LoadProgress("profile", message="measuring activation memory"))
        return self.runner.profile(self.args.config.max_num_batched_tokens, self.args.config.max_num_seqs)

    def _progress(self, p) -> None:
        # One message per tensor would flood the owner: report every ~1% of the bytes.
        step = max(1, p.bytes_total // 100)
        if p.bytes_done >= getattr(self, "_reported", 0) + step or p.tensors_done == p.tensors_total:
            self._reported = p.bytes_done
            self.send("progress", progress=p)

    def _init_distributed(self) -> None:
        import torch.distributed as dist

        a = self.args
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        # device_id binds NCCL's communicator to this rank's GPU at once, well before any
        # collective is captured into a CUDA graph.
        dist.init_process_group(backend, init_method=f"file://{a.run_dir}/rendezvous",
                                rank=a.rank, world_size=a.tp, timeout=timedelta(seconds=120),
                                device_id=self.device if self.device.type == "cuda" else None)

    def _agree_on_blocks(self, reserved: int, resident: int) -> int:
        """KV blocks every rank can hold beside `reserved` bytes (activations, graphs) and
        the `resident` ones it held before measuring them."""
        import torch
        import torch.distributed as dist

        from ..exceptions import ModelLoadError
        from .memory import kv_budget

        a = self.args
        c = a.config
        budget = c.kv_cache_memory if c.kv_cache_memory is not None else kv_budget(
            self.device, c.device_memory, c.memory_utilization, reserved, a.tp, resident)
        need = -(-a.max_model_len // c.block_size)
        fit = max(0, budget) // self.runner.kv_block_bytes
        if c.kv_cache_memory is None and self.device.type == "cpu":
            fit = min(fit, cpu_kv_blocks_cap(c.max_num_seqs, a.max_model_len, c.block_size))
        # On the rank's device: NCCL reduces CUDA tensors only.
        blocks = torch.tensor([fit], dtype=torch.int64, device=self.device)
        if a.tp > 1:
            dist.all_reduce(blocks, op=dist.ReduceOp.MIN)
        num_blocks = int(blocks)
        if num_blocks < need:
            missing = (need - num_blocks) * self.runner.kv_block_bytes
            raise ModelLoadError(
                f"the KV cache holds {num_blocks * c.block_size} tokens per rank but one "
                f"max_model_len={a.max_model_len} sequence needs {need * c.block_size}: "
                f"{missing / 2**20:.1f} MiB more KV memory is needed; lower max_model_len, raise "
                "the TP degree, or give the devices more memory (device memory / memory "
                "utilization / kv cache memory)")
        return num_blocks

    def serve(self) -> None:
        if self.args.rank == 0:
            from .rank0 import Rank0Loop

            Rank0Loop(self).run()
        else:
            self._follow()

    def _follow(self) -> None:
        plans = self.zmq.socket(zmq.PULL)
        plans.bind(self.args.endpoint(f"rank{self.args.rank}"))
        while True:
            kind, step = pickle.loads(plans.recv())
            if kind == "stop":
                return
            self.runner.execute(step)


def main(args_file: str) -> None:
    threading.Thread(target=_die_with_owner, args=(os.getppid(),), daemon=True).start()
    _run(args_file)


def warm_main() -> None:
    """A pooled worker (engine/core/warm.py): import what a rank needs, say "warm" on
    stdout, then run the rank whose arguments' path arrives on stdin (none: exit)."""
    threading.Thread(target=_die_with_owner, args=(os.getppid(),), daemon=True).start()
    import torch  # noqa: F401 - the import is the point

    from . import model_runner, rank0  # noqa: F401
    os.write(1, b"warm\n")
    os.dup2(2, 1)  # nobody reads the pipe from here on: anything printed goes to the log
    args_file = sys.stdin.readline().strip()
    if not args_file:
        os._exit(0)
    _run(args_file)


def _run(args_file: str) -> None:
    global _run_dir
    args: WorkerArgs = pickle.loads(Path(args_file).read_bytes())
    _run_dir = args.run_dir
    # Before torch is imported, for a worker started cold; a warm one adopts it through
    # torch.set_num_threads.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.device.startswith("cpu"):  # before torch starts its thread pool, which inherits it
        pin_cpu_device(int(args.device.partition(":")[2] or 0), args.threads)
    worker = Worker(args)
    try:
        worker.start()
        worker.serve()
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the owner
        worker.send("error", rank=args.rank, error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc())
        code = 1
    else:
        code = 0
    # Linger is honoured when the context terminates, not when a socket closes: without
    # this, an error sent before the connection is up dies with the process.
    worker.zmq.destroy(linger=2000)
    os._exit(code)
