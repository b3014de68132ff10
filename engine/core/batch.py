"""The step plan rank 0 sends to every rank: flat token arrays plus attention metadata.

Built once on rank 0 with numpy (cheap to pickle), turned into tensors on each rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .layers.attention import AttentionMetadata, PrefillSpan
from .sequence import Sequence


@dataclass
class StepInput:
    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    num_decodes: int
    decode_block_tables: np.ndarray  # [num_decodes, max_blocks] int32
    decode_context_lens: np.ndarray  # [num_decodes] int32
    prefill_spans: list[tuple[int, int, int]]  # (start, end, context_len)
    prefill_block_tables: list[np.ndarray]
    logits_indices: np.ndarray  # [S] int64: the token whose logits each sampling seq needs
    # [R] int64: tokens whose logits give prompt logprobs, in batch order (Sequence.prompt_logprob_positions)
    prompt_logits_indices: np.ndarray

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def metadata(self, device: torch.device) -> AttentionMetadata:
        def t(a: np.ndarray) -> torch.Tensor:
            return to_device(a, device)

        spans = [PrefillSpan(s, e, c, t(bt) if c > e - s else None)
                 for (s, e, c), bt in zip(self.prefill_spans, self.prefill_block_tables)]
        return AttentionMetadata(t(self.slot_mapping), self.num_decodes, t(self.decode_block_tables),
                                 t(self.decode_context_lens), spans)


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A step array on `device`. On CUDA it goes through pinned host memory, so the copy is
    asynchronous (torch's pinned-memory cache keeps the buffer until the copy has run)."""
    t = torch.from_numpy(a)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def build_step(batch: list[tuple[Sequence, int]], block_size: int) -> StepInput:
    """`batch` must list single-token entries first (the scheduler's order)."""
    ids, positions, slots, logits_at, prompt_at = [], [], [], [], []
    num_decodes = sum(1 for _, n in batch if n == 1)
    max_blocks = max((len(seq.block_table) for seq, _ in batch[:num_decodes]), default=1)
    decode_tables = np.zeros((num_decodes, max_blocks), dtype=np.int32)
    decode_lens = np.zeros(num_decodes, dtype=np.int32)
    spans, span_tables = [], []
    offset = 0
    for i, (seq, n) in enumerate(batch):
        start = seq.num_computed_tokens
        table = np.asarray(seq.block_table, dtype=np.int64)
        pos = np.arange(start, start + n, dtype=np.int64)
        ids.append(np.asarray(seq.token_ids[start:start + n], dtype=np.int64))
        positions.append(pos)
        slots.append(table[pos // block_size] * block_size + pos % block_size)
        if i < num_decodes:
            decode_tables[i, :len(table)] = table
            decode_lens[i] = start + 1
        else:
            spans.append((offset, offset + n, start + n))
            span_tables.append(table.astype(np.int32))
        prompt_at.extend(offset - start + p for p in seq.prompt_logprob_positions(n))
        offset += n
        if start + n == seq.num_tokens:
            logits_at.append(offset - 1)
    return StepInput(np.concatenate(ids), np.concatenate(positions), np.concatenate(slots),
                     num_decodes, decode_tables, decode_lens, spans, span_tables,
                     np.asarray(logits_at, dtype=np.int64), np.asarray(prompt_at, dtype=np.int64))
