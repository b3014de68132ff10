"""Tensor-parallel linear layers.

Each parameter carries a `weight_loader(param, source, shard)` that reads exactly this
rank's part of a checkpoint tensor (`source`: a loader.CheckpointTensor, indexed like a
tensor), so no rank ever materialises rows or columns it does not keep; row ranges are
read straight into the parameter.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel import TPGroup, split_range


def copy_rows(dest: torch.Tensor, source: Any, start: int, end: int) -> None:
    """dest <- rows start..end of source: a checkpoint tensor reads them into dest's own
    memory; a plain tensor (a loader that transformed its source) is sliced and copied."""
    if hasattr(source, "read_rows_into"):
        source.read_rows_into(dest, start, end)
    else:
        dest.copy_(source[start:end])


def _param(shape: tuple[int, ...], dtype: torch.dtype, loader: Any) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    p.weight_loader = loader
    return p


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W split by output rows; each rank returns its slice of y.

    `parts` lists the output widths of the checkpoint tensors fused into this layer
    (q/k/v, or gate/up); each is split across ranks separately, so the local weight is
    [q_r; k_r; v_r] rather than a slice of the concatenation.
    """

    def __init__(self, in_features: int, parts: list[int], group: TPGroup,
                 bias: bool, dtype: torch.dtype):
        super().__init__()
        for width in parts:
            assert width % group.size == 0, f"{width} rows do not split over tp={group.size}"
        self.group = group
        self.parts = parts
        self.local_parts = [w // group.size for w in parts]
        out = sum(self.local_parts)
        self.weight = _param((out, in_features), dtype, self._load)
        self.bias = _param((out,), dtype, self._load) if bias else None

    def _load(self, param: nn.Parameter, source: Any, shard: int) -> None:
        start, end = split_range(self.parts[shard], self.group.rank, self.group.size)
        offset = sum(self.local_parts[:shard])
        copy_rows(param.data[offset:offset + end - start], source, start, end)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = x W^T with W split by input columns; partial sums are all-reduced."""

    def __init__(self, in_features: int, out_features: int, group: TPGroup, dtype: torch.dtype):
        super().__init__()
        assert in_features % group.size == 0
        self.group = group
        self.in_features = in_features
        self.weight = _param((out_features, in_features // group.size), dtype, self._load)

    def _load(self, param: nn.Parameter, source: Any, shard: int) -> None:
        start, end = split_range(self.in_features, self.group.rank, self.group.size)
        param.data.copy_(source[:, start:end])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(F.linear(x, self.weight))


def load_replicated(param: nn.Parameter, source: Any, shard: int) -> None:
    copy_rows(param.data, source, 0, param.shape[0])
