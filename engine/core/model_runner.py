"""One rank's model: its weight shard, its KV cache, and the forward pass of a step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mgpud.records import LoadProgress

from ..config import ModelConfig
from .batch import StepInput, to_device
from .cuda_graphs import DecodeGraphs, capture_decode_graphs
from .layers.attention import AttentionMetadata, KVCache
from .layers.moe import SparseMoE, balance
from .layers.quant import FP8, linear_method
from .loader import load_weights
from .memory import peak_rss, zeroed
from .models import model_class
from .parallel import TPGroup

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_PROFILE_TOKENS = 128  # tokens of the batch a CPU device's profile runs

# Tensors read at once by a rank: its own cores, up to where reads from the page cache
# saturate memory bandwidth anyway.
_LOAD_THREADS = 8


class ModelRunner:
    def __init__(self, model_cfg: ModelConfig, model_dir: Path, group: TPGroup, device: torch.device,
                 dtype: str, max_model_len: int, block_size: int,
                 progress: Callable[[LoadProgress], None] | None = None, expert_parallel: bool = False,
                 quantization: str | None = None, kv_cache_dtype: str = "auto"):
        """quantization: the linear layers' (ModelConfig.weight_quantization); kv_cache_dtype:
        auto (the model dtype) or fp8 (e4m3, widened to the model dtype when read)."""
        self.cfg = model_cfg
        self.group = group
        self.device = device
        self.dtype = DTYPES[dtype]
        self.kv_dtype = FP8 if kv_cache_dtype == "fp8" else self.dtype
        self.block_size = block_size
        self.max_model_len = max_model_len
        with torch.device(device):
            method = linear_method(quantization, prequantized=model_cfg.quantization is not None)
            self.model = model_class(model_cfg)(model_cfg, group, self.dtype, max_model_len, expert_parallel, method)
        load_weights(self.model, model_dir, progress, threads=min(torch.get_num_threads(), _LOAD_THREADS))
        self.caches: list[KVCache] = []
        self.graphs: DecodeGraphs | None = None  # decode steps replay these once captured
        self.moe_layers = [m for m in self.model.modules() if isinstance(m, SparseMoE)]
        # Load balance is over the units that share the experts' work: ranks under EP.
        self.balance_units = group.size if expert_parallel else model_cfg.num_experts

    def expert_load(self) -> tuple[int, float | None]:
        """(token-to-expert assignments so far, summed over the MoE layers; their balance)."""
        if not self.moe_layers:
            return 0, None
        counts = torch.stack([m.tokens_per_expert for m in self.moe_layers])
        return int(counts.sum()), balance(counts, self.balance_units)

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def kv_block_bytes(self) -> int:
        return self.cfg.kv_bytes_per_token(self.kv_dtype.itemsize, self.group.size) * self.block_size

    def profile(self, num_tokens: int, max_num_seqs: int) -> int:
        """Peak activation bytes of a prefill step of `num_tokens` tokens (measured)."""
        lengths = self._profile_lengths(num_tokens, max_num_seqs)
        scale = 1.0
        if self.device.type == "cpu":
            # A full-size forward takes seconds on a CPU. Activations grow with the batch, so
            # whole sequences of ~CPU_PROFILE_TOKENS run and their peak is scaled up: exact for
            # what grows with the tokens, an over-estimate for each sequence's own attention.
            keep = -(-CPU_PROFILE_TOKENS // lengths[0])
            if keep < len(lengths):
                scale = sum(lengths) / sum(lengths[:keep])
                lengths = lengths[:keep]
        return int(self._peak(lengths) * scale)

    def _peak(self, lengths: list[int]) -> int:
        num_tokens = sum(lengths)
        spans, start = [], 0
        for n in lengths:
            spans.append((start, start + n, n))
            start += n
        step = StepInput(
            input_ids=np.zeros(num_tokens, dtype=np.int64),
            positions=np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]),
            slot_mapping=np.full(num_tokens, -1, dtype=np.int64),
            num_decodes=0, decode_block_tables=np.zeros((0, 1), dtype=np.int32),
            decode_context_lens=np.zeros(0, dtype=np.int32),
            prefill_spans=spans, prefill_block_tables=[np.zeros(1, dtype=np.int32)] * len(spans),
            logits_indices=np.asarray([e - 1 for _, e, _ in spans], dtype=np.int64),
            prompt_logits_indices=np.zeros(0, dtype=np.int64))
        with self._dummy_caches():
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                base = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                self.execute(step)
                torch.cuda.synchronize(self.device)
                return torch.cuda.max_memory_allocated(self.device) - base
            with peak_rss() as peak:
                self.execute(step)
            return peak[0]

    def profile_graphs(self, max_num_seqs: int) -> int:
        """Device bytes the decode graphs will hold: captured once over a one-block cache
        (their shapes do not depend on the cache's size), measured, and released."""
        with self._dummy_caches():
            graphs, held = self._capture(max_num_seqs)
        del graphs
        torch.cuda.empty_cache()
        return held

    @contextmanager
    def _dummy_caches(self) -> Iterator[None]:
        """A one-block KV cache that profiling steps may run over (their slots are -1)."""
        heads = self.cfg.num_kv_heads // self.group.size
        dummy = torch.zeros(1, self.block_size, heads, self.cfg.head_dim, dtype=self.kv_dtype, device=self.device)
        self.caches = [(dummy, dummy)] * self.cfg.num_layers
        try:
            yield
        finally:
            self.caches = []
            for m in self.moe_layers:  # the profile's dummy tokens are no load
                m.tokens_per_expert.zero_()

    def _profile_lengths(self, num_tokens: int, max_num_seqs: int) -> list[int]:
        per_seq = max(1, min(self.max_model_len, -(-num_tokens // max_num_seqs)))
        lengths = [per_seq] * (num_tokens // per_seq)
        if num_tokens % per_seq:
            lengths.append(num_tokens % per_seq)
        return lengths

    def allocate_kv(self, num_blocks: int) -> None:
        heads = self.cfg.num_kv_heads // self.group.size
        shape = (self.cfg.num_layers, 2, num_blocks, self.block_size, heads, self.cfg.head_dim)
        # Zeroed, not empty: masked-out slots must never hold NaN bit patterns.
        self.kv = zeroed(shape, self.kv_dtype, self.device)
        self.caches = [(layer[0], layer[1]) for layer in self.kv]

    def capture_graphs(self, max_num_seqs: int) -> int:
        """Capture the decode graphs over the allocated KV cache; returns the bytes they hold."""
        self.graphs, held = self._capture(max_num_seqs)
        return held

    @torch.inference_mode()
    def _capture(self, max_num_seqs: int) -> tuple[DecodeGraphs, int]:
        return capture_decode_graphs(self._forward, max_num_seqs, self.max_model_len, self.block_size, self.device)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.model(ids, positions, meta, self.caches)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor | None:
        """Full-vocab float32 logits [S + R, vocab] on rank 0: a row per sampling sequence,
        then a row per prompt-logprob position. The LM head runs on those rows only."""
        if self.graphs is not None and self.graphs.fits(step):
            hidden = self.graphs.replay(step)
        else:
            ids, positions = to_device(step.input_ids, self.device), to_device(step.positions, self.device)
            hidden = self._forward(ids, positions, step.metadata(self.device))
        rows = np.concatenate((step.logits_indices, step.prompt_logits_indices))
        if len(rows) == 0:
            return None
        logits = self.model.logits(hidden.index_select(0, to_device(rows, self.device)))
        return None if logits is None else logits.float()
