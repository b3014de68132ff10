"""One rank's model: its weight shard, its KV cache, and the forward pass of a step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mgpud.records import LoadProgress

from ..config import ModelConfig
from .batch import StepInput
from .layers.attention import KVCache
from .loader import load_weights
from .memory import peak_rss, zeroed
from .models import model_class
from .parallel import TPGroup

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_PROFILE_TOKENS = 128  # tokens of the batch a CPU device's profile runs


class ModelRunner:
    def __init__(self, model_cfg: ModelConfig, model_dir: Path, group: TPGroup, device: torch.device,
                 dtype: str, max_model_len: int, block_size: int,
                 progress: Callable[[LoadProgress], None] | None = None):
        self.cfg = model_cfg
        self.group = group
        self.device = device
        self.dtype = DTYPES[dtype]
        self.block_size = block_size
        self.max_model_len = max_model_len
        with torch.device(device):
            self.model = model_class(model_cfg)(model_cfg, group, self.dtype, max_model_len)
        load_weights(self.model, model_dir, progress)
        self.caches: list[KVCache] = []

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def kv_block_bytes(self) -> int:
        return self.cfg.kv_bytes_per_token(self.dtype.itemsize, self.group.size) * self.block_size

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
        heads = self.cfg.num_kv_heads // self.group.size
        dummy = torch.zeros(1, self.block_size, heads, self.cfg.head_dim, dtype=self.dtype, device=self.device)
        self.caches = [(dummy, dummy)] * self.cfg.num_layers
        try:
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
        finally:
            self.caches = []

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
        self.kv = zeroed(shape, self.dtype, self.device)
        self.caches = [(layer[0], layer[1]) for layer in self.kv]

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor | None:
        """Full-vocab float32 logits [S + R, vocab] on rank 0: a row per sampling sequence,
        then a row per prompt-logprob position. The LM head runs on those rows only."""
        ids = torch.from_numpy(step.input_ids).to(self.device, non_blocking=True)
        positions = torch.from_numpy(step.positions).to(self.device, non_blocking=True)
        hidden = self.model(ids, positions, step.metadata(self.device), self.caches)
        rows = np.concatenate((step.logits_indices, step.prompt_logits_indices))
        if len(rows) == 0:
            return None
        logits = self.model.logits(hidden.index_select(0, torch.from_numpy(rows).to(self.device)))
        return None if logits is None else logits.float()
