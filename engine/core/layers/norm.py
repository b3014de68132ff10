"""RMSNorm with the residual add fused in where a residual exists."""

from __future__ import annotations

import torch
from torch import nn

from typing import Any

from .. import kernels
from ..parallel import TPGroup, split_range
from .linear import load_replicated


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = load_replicated

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (normed, new residual); the residual is x itself when none is given."""
        if residual is None:
            return kernels.rms_norm(x, self.weight, self.eps), x
        return kernels.add_rms_norm(x, residual, self.weight, self.eps)


class SplitRMSNorm(nn.Module):
    """RMSNorm over a whole projection whose columns are split across ranks (OLMoE's q/k
    norm): each rank keeps its slice of the weight, and `split_rms_norm` all-reduces the
    sums of squares so that every rank divides by the RMS of the whole row."""

    def __init__(self, width: int, eps: float, group: TPGroup, dtype: torch.dtype):
        super().__init__()
        self.width, self.eps, self.group = width, eps, group
        self.weight = nn.Parameter(torch.ones(width // group.size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self._load

    def _load(self, param: nn.Parameter, source: Any, shard: int) -> None:
        start, end = split_range(self.width, self.group.rank, self.group.size)
        param.data.copy_(source[start:end])


def split_rms_norm(pairs: list[tuple[torch.Tensor, SplitRMSNorm]]) -> list[torch.Tensor]:
    """Normalise each (x [T, local width], norm) with one all-reduce for all of them; the
    rounding points are transformers' (normalise in float32, round, then scale)."""
    squares = torch.stack([x.float().pow(2).sum(-1) for x, _ in pairs], dim=-1)
    group = pairs[0][1].group
    group.all_reduce(squares)
    out = []
    for n, (x, norm) in enumerate(pairs):
        inv = torch.rsqrt(squares[:, n:n + 1] / norm.width + norm.eps)
        out.append((x.float() * inv).to(x.dtype) * norm.weight)
    return out
