"""Vocabulary-parallel embedding and LM head: each rank owns a contiguous vocab range.

Both keep their rows as a linear layer's `method` does (quant.py): in the model dtype, or
8-bit with one scale per vocabulary row. A tied model's embedding is its LM head's rows
(one copy): the lookup widens the rows it gathers with their scales.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..parallel import TPGroup
from .quant import LinearMethod, Unquantized


def padded_vocab(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, group: TPGroup, dtype: torch.dtype,
                 method: LinearMethod | None = None):
        super().__init__()
        self.group = group
        self.vocab_size = vocab_size
        self.dtype = dtype
        self.per_rank = padded_vocab(vocab_size, group.size) // group.size
        self.start = group.rank * self.per_rank
        self.method = method or Unquantized()
        self.method.create(self, self.per_rank, hidden, dtype, self._load)

    def _load(self, param: nn.Parameter, source: Any, shard: int) -> None:
        end = max(self.start, min(self.start + self.per_rank, self.vocab_size))
        self.method.store_rows(self, 0, source, self.start, end)
        for held in self.parameters(recurse=False):  # padding rows past the vocabulary (and their scales)
            held.data[end - self.start:].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.group.size == 1:
            return self.method.embed(self, ids)
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = self.method.embed(self, local.masked_fill(outside, 0))
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return self.group.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for this rank's vocab range, gathered on rank 0 and cut to the real vocab."""

    def tie(self, embedding: VocabParallelEmbedding) -> None:
        """Take the embedding's rows (and their scales) as this head's own: one copy of them."""
        self.method = embedding.method
        for name, param in embedding.named_parameters(recurse=False):
            setattr(self, name, param)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = self.group.gather_last_dim(self.method.apply(self, hidden, None))
        return None if logits is None else logits[..., :self.vocab_size]
