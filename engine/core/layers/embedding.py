"""Vocabulary-parallel embedding and LM head: each rank owns a contiguous vocab range."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel import TPGroup
from .linear import copy_rows


def padded_vocab(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, group: TPGroup, dtype: torch.dtype):
        super().__init__()
        self.group = group
        self.vocab_size = vocab_size
        self.per_rank = padded_vocab(vocab_size, group.size) // group.size
        self.start = group.rank * self.per_rank
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self._load

    def _load(self, param: nn.Parameter, source: Any, shard: int) -> None:
        end = max(self.start, min(self.start + self.per_rank, self.vocab_size))
        copy_rows(param.data[:end - self.start], source, self.start, end)
        param.data[end - self.start:].zero_()  # padding rows past the vocabulary

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.group.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return self.group.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for this rank's vocab range, gathered on rank 0 and cut to the real vocab."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = self.group.gather_last_dim(F.linear(hidden, self.weight))
        return None if logits is None else logits[..., :self.vocab_size]
