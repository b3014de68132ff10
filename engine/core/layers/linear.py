"""Tensor-parallel linear layers.

Each parameter carries a `weight_loader(param, source, shard)` that reads exactly this
rank's part of a checkpoint tensor (`source`: a loader.CheckpointTensor, indexed like a
tensor), so no rank ever materialises rows or columns it does not keep; unquantized row
ranges are read straight into the parameter. How the weight is kept and multiplied
(model dtype, int8, fp8) is the layer's `method` (quant.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel import TPGroup, split_range
from .quant import LinearMethod, Unquantized, copy_rows, parameter

_AMAX_ROWS = 256  # rows read at a time when a row-parallel layer needs whole-row maxima


def _per_tensor(source: Any) -> bool:
    return math.prod(source.get_shape()) == 1


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W split by output rows; each rank returns its slice of y.

    `parts` lists the output widths of the checkpoint tensors fused into this layer
    (q/k/v, or gate/up); each is split across ranks separately, so the local weight is
    [q_r; k_r; v_r] rather than a slice of the concatenation.
    """

    def __init__(self, in_features: int, parts: list[int], group: TPGroup,
                 bias: bool, dtype: torch.dtype, method: LinearMethod | None = None):
        super().__init__()
        for width in parts:
            assert width % group.size == 0, f"{width} rows do not split over tp={group.size}"
        self.group = group
        self.parts = parts
        self.local_parts = [w // group.size for w in parts]
        out = sum(self.local_parts)
        self.method = method or Unquantized()
        self.method.create(self, out, in_features, dtype, self._load)
        self.bias = parameter((out,), dtype, self._load) if bias else None

    def _load(self, param: nn.Parameter, source: Any, shard: int) -> None:
        start, end = split_range(self.parts[shard], self.group.rank, self.group.size)
        offset = sum(self.local_parts[:shard])
        if param is self.weight:
            self.method.store_rows(self, offset, source, start, end)
        elif param is self.bias:
            copy_rows(param.data[offset:offset + end - start], source, start, end)
        else:  # a quantized checkpoint's weight_scale
            scale = source[...] if _per_tensor(source) else source[start:end]
            self.method.store_scale(self, offset, end - start, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x, self.bias)


class RowParallelLinear(nn.Module):
    """y = x W^T with W split by input columns; partial sums are all-reduced."""

    def __init__(self, in_features: int, out_features: int, group: TPGroup, dtype: torch.dtype,
                 method: LinearMethod | None = None):
        super().__init__()
        assert in_features % group.size == 0
        self.group = group
        self.in_features = in_features
        self.method = method or Unquantized()
        self.method.create(self, out_features, in_features // group.size, dtype, self._load)

    def _load(self, param: nn.Parameter, source: Any, shard: int) -> None:
        if param is self.weight:
            start, end = split_range(self.in_features, self.group.rank, self.group.size)
            self.method.store(self, 0, source[:, start:end], lambda: _row_amax(source))
        else:  # a quantized checkpoint's weight_scale: output rows are not split
            scale = source[...] if _per_tensor(source) else source[:]
            self.method.store_scale(self, 0, self.weight.shape[0], scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(self.partial(x))

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's addend of y, for a caller that folds it into a later all-reduce."""
        return self.method.apply(self, x, None)


class ReplicatedLinear(nn.Module):
    """y = x W^T with the whole W on every rank (a router: a few rows, needed by all), kept
    in the model dtype: routing decisions flip on small differences."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype):
        super().__init__()
        self.weight = parameter((out_features, in_features), dtype, load_replicated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def _row_amax(source: Any) -> torch.Tensor:
    """|max| of each whole checkpoint row, read a few rows at a time: a rank keeps only its
    columns, but scales taken over whole rows quantize alike at every TP degree."""
    rows = source.get_shape()[0]
    return torch.cat([source[r:r + _AMAX_ROWS].float().abs().amax(dim=1) for r in range(0, rows, _AMAX_ROWS)])


def load_replicated(param: nn.Parameter, source: Any, shard: int) -> None:
    copy_rows(param.data, source, 0, param.shape[0])
