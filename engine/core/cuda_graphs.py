"""CUDA graphs for decode steps: one captured forward pass per batch bucket.

At small batch a GPU decode step costs more in kernel launches than in math; replaying a
captured graph launches the whole forward pass at once. A graph replays fixed shapes at
fixed addresses, so decode inputs live in static device buffers (`DecodeInputs`) that each
step overwrites in place, padded to the next captured batch size (a bucket). Padding rows
write nowhere (slot -1) and read nothing (context length 0), so they never touch a real
KV block. The block table is as wide as `max_model_len` needs, which fixes the attention
kernel's launch shape. Logits are computed outside the graph, on the real rows only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .batch import StepInput
from .layers.attention import AttentionMetadata

BUCKET_CAP = 512  # the largest captured batch; larger decode batches run eagerly
_SMALL_BUCKETS = (1, 2, 4, 8)
_BUCKET_STRIDE = 16

# forward(ids, positions, metadata) -> hidden states [bucket, hidden]
Forward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]


def batch_buckets(max_num_seqs: int, cap: int = BUCKET_CAP) -> list[int]:
    """The batch sizes to capture: 1, 2, 4, 8, then every 16, ending at max_num_seqs
    (itself a bucket, so that no step pads past what the scheduler can run), at most `cap`."""
    limit = max(1, min(max_num_seqs, cap))
    grid = [*_SMALL_BUCKETS, *range(_BUCKET_STRIDE, limit, _BUCKET_STRIDE)]
    return sorted({b for b in grid if b < limit} | {limit})


def bucket_for(batch: int, buckets: list[int]) -> int | None:
    """The smallest bucket holding `batch` sequences; None when it is larger than all."""
    return next((b for b in buckets if b >= batch), None)


def is_pure_decode(step: StepInput) -> bool:
    return step.num_decodes > 0 and step.num_decodes == step.num_tokens and len(step.prompt_logits_indices) == 0


class DecodeInputs:
    """The static inputs every captured graph reads: device tensors updated in place from
    host mirrors (pinned on CUDA, so the copies are asynchronous). No step allocates."""

    def __init__(self, max_batch: int, table_width: int, device: torch.device):
        self.device = device
        self.max_batch = max_batch
        self.table_width = table_width
        pinned = device.type == "cuda"

        def pair(*shape: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            host = torch.zeros(shape, dtype=dtype, pin_memory=pinned)
            return host, torch.zeros(shape, dtype=dtype, device=device)

        self._host_ids, self.ids = pair(max_batch, dtype=torch.int64)
        self._host_positions, self.positions = pair(max_batch, dtype=torch.int64)
        self._host_slots, self.slots = pair(max_batch, dtype=torch.int64)
        self._host_tables, self.tables = pair(max_batch, table_width, dtype=torch.int32)
        self._host_lens, self.context_lens = pair(max_batch, dtype=torch.int32)
        self._host_slots.fill_(-1)
        self.slots.fill_(-1)
        # Set when a copy is queued: the host mirrors must not change until it has run.
        self._copied = torch.cuda.Event() if pinned else None

    def load(self, step: StepInput, bucket: int) -> None:
        """Write a pure-decode step into rows [0, bucket): its sequences, then padding."""
        n = step.num_decodes
        if not n <= bucket <= self.max_batch:
            raise ValueError(f"a batch of {n} does not fit bucket {bucket} (at most {self.max_batch})")
        width = step.decode_block_tables.shape[1]
        if width > self.table_width:
            raise ValueError(f"block tables {width} wide exceed the captured width {self.table_width}")
        if self._copied is not None:
            self._copied.synchronize()
        self._fill(self._host_ids, step.input_ids, 0)
        self._fill(self._host_positions, step.positions, 0)
        self._fill(self._host_slots, step.slot_mapping, -1)  # padding tokens are never cached
        self._fill(self._host_lens, step.decode_context_lens, 0)  # ... and attend to nothing
        tables = self._host_tables.numpy()
        tables[:bucket] = 0
        tables[:n, :width] = step.decode_block_tables
        for host, dev in self._pairs():
            dev[:bucket].copy_(host[:bucket], non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def _fill(self, host: torch.Tensor, values: np.ndarray, pad: int) -> None:
        view = host.numpy()
        view[:len(values)] = values
        view[len(values):] = pad

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self._host_ids, self.ids), (self._host_positions, self.positions),
                (self._host_slots, self.slots), (self._host_tables, self.tables),
                (self._host_lens, self.context_lens)]

    def metadata(self, bucket: int) -> AttentionMetadata:
        return AttentionMetadata(self.slots[:bucket], bucket, self.tables[:bucket], self.context_lens[:bucket], [])

    def run(self, forward: Forward, bucket: int) -> torch.Tensor:
        """The forward pass over the first `bucket` rows, as a graph captures it."""
        return forward(self.ids[:bucket], self.positions[:bucket], self.metadata(bucket))


class DecodeGraphs:
    """One graph per bucket, captured largest first into one shared memory pool (a smaller
    graph reuses the larger one's memory: only one replays at a time)."""

    def __init__(self, forward: Forward, inputs: DecodeInputs, buckets: list[int]):
        self.forward = forward
        self.inputs = inputs
        self.buckets = buckets
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def capture(self) -> None:
        pool = None
        for bucket in sorted(self.buckets, reverse=True):
            # A first run compiles the Triton kernels and sets up NCCL outside the capture.
            self.inputs.run(self.forward, bucket)
            torch.cuda.synchronize(self.inputs.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bucket] = self.inputs.run(self.forward, bucket)
            pool = graph.pool()
            self.graphs[bucket] = graph
        torch.cuda.synchronize(self.inputs.device)

    def fits(self, step: StepInput) -> bool:
        return (is_pure_decode(step) and step.num_decodes <= self.buckets[-1]
                and step.decode_block_tables.shape[1] <= self.inputs.table_width)

    def replay(self, step: StepInput) -> torch.Tensor:
        """Hidden states [bucket, hidden]: the step's rows first, then padding rows."""
        bucket = bucket_for(step.num_decodes, self.buckets)
        assert bucket is not None, "fits() decides which steps replay"
        self.inputs.load(step, bucket)
        self.graphs[bucket].replay()
        return self.outputs[bucket]


def capture_decode_graphs(forward: Forward, max_num_seqs: int, max_model_len: int, block_size: int,
                          device: torch.device) -> tuple[DecodeGraphs, int]:
    """Capture every bucket's graph; returns them and the device memory they hold (bytes)."""
    free_before = _free_memory(device)
    buckets = batch_buckets(max_num_seqs)
    inputs = DecodeInputs(buckets[-1], -(-max_model_len // block_size), device)
    graphs = DecodeGraphs(forward, inputs, buckets)
    graphs.capture()
    return graphs, max(0, free_before - _free_memory(device))


def _free_memory(device: torch.device) -> int:
    """Free device bytes once the allocator has handed back what it merely caches (the warm-up
    runs' activations), so that the difference is what the graphs and their inputs hold."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info(device)[0]
