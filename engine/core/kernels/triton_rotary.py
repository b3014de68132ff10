"""Rotary position embedding (neox / rotate_half layout), in place, one program per token."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rotary_kernel(x_ptr, positions_ptr, cache_ptr, stride_token, stride_head, stride_cache, num_heads,
                   HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token)
    dims = tl.arange(0, BLOCK_D)
    heads = tl.arange(0, BLOCK_H)
    dim_mask = dims < HALF
    cos = tl.load(cache_ptr + position * stride_cache + dims, mask=dim_mask, other=0.0)
    sin = tl.load(cache_ptr + position * stride_cache + HALF + dims, mask=dim_mask, other=0.0)
    mask = (heads < num_heads)[:, None] & dim_mask[None, :]
    first = x_ptr + token * stride_token + heads[:, None] * stride_head + dims[None, :]
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = x_ptr.dtype.element_ty
    tl.store(first, (x1 * cos[None, :] - x2 * sin[None, :]).to(dtype), mask=mask)
    tl.store(first + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(dtype), mask=mask)


def _rotate(x: Tensor, positions: Tensor, cache: Tensor) -> None:
    tokens, heads, head_dim = x.shape
    assert x.stride(2) == 1, "the head dimension must be contiguous"
    half = head_dim // 2
    _rotary_kernel[(tokens,)](
        x,
        positions,
        cache,
        x.stride(0),
        x.stride(1),
        cache.stride(0),
        heads,
        HALF=half,
        BLOCK_H=triton.next_power_of_2(heads),
        BLOCK_D=triton.next_power_of_2(half),
    )


def apply_rotary(q: Tensor, k: Tensor, positions: Tensor, cache: Tensor) -> None:
    assert cache.stride(1) == 1, "the rotary cache rows must be contiguous"
    _rotate(q, positions, cache)
    _rotate(k, positions, cache)
