"""Paged decode attention: one query token per sequence over its block-table KV cache.

One program per (sequence, KV head, split) handles all query heads of the GQA group at once,
so each K/V tile is read once per group. Tokens are visited in tiles with an online softmax.
When too few (sequence, KV head) pairs exist to fill the GPU (small batches, long contexts),
the context is split across programs and a second kernel merges the partial results by
their log-sum-exp.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

_TILE = 32  # tokens per online-softmax step; any power of two >= 16 (tl.dot's minimum)
_MIN_TOKENS_PER_SPLIT = 256  # below this a split costs more in merging than it saves


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    out_ptr,
    lse_ptr,
    scale,
    tokens_per_split,
    stride_q_seq,
    stride_q_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    stride_tables_seq,
    stride_out_seq,
    stride_out_head,
    stride_out_split,
    stride_lse_seq,
    stride_lse_head,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    # The group's query heads are the rows of a [GROUP_PAD, HEAD_DIM] tile; padding rows
    # (tl.dot needs at least 16) are zero and never stored.
    member = tl.arange(0, GROUP_PAD)
    is_member = member < GROUP
    q_heads = kv_head * GROUP + member
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_ptr + seq * stride_q_seq + q_heads[:, None] * stride_q_head + dims[None, :],
        mask=is_member[:, None],
        other=0.0,
    ).to(tl.float32)

    context_len = tl.load(context_lens_ptr + seq)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, context_len)

    running_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for tile_start in range(start, end, TILE):
        tokens = tile_start + tl.arange(0, TILE)
        valid = tokens < end
        # Table entries past the context are arbitrary, so they are never dereferenced.
        blocks = tl.load(
            block_tables_ptr + seq * stride_tables_seq + tokens // BLOCK_SIZE, mask=valid, other=0
        ).to(tl.int64)
        rows = (
            blocks * stride_cache_block
            + (tokens % BLOCK_SIZE) * stride_cache_slot
            + kv_head * stride_cache_head
        )
        k = tl.load(k_cache_ptr + rows[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_cache_ptr + rows[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
        # "ieee": float32 products, not TF32, so a float32 model gets float32 attention.
        scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee") * scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        # Every tile holds at least one valid token, so new_max is finite from the first tile.
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp(running_max - new_max)
        probs = tl.exp(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.dot(probs, v.to(tl.float32), input_precision="ieee")
        running_max = new_max

    # A split wholly past the context saw no token: it contributes zeros with weight exp(-inf).
    safe_sum = tl.where(running_sum > 0, running_sum, 1.0)
    out = acc / safe_sum[:, None]
    out_offsets = seq * stride_out_seq + q_heads[:, None] * stride_out_head + split * stride_out_split
    tl.store(
        out_ptr + out_offsets + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=is_member[:, None],
    )
    if WRITE_LSE:
        lse = running_max + tl.log(safe_sum)
        tl.store(
            lse_ptr + seq * stride_lse_seq + q_heads * stride_lse_head + split, lse, mask=is_member
        )


@triton.jit
def _merge_splits_kernel(
    partial_ptr,
    lse_ptr,
    out_ptr,
    num_splits,
    stride_partial_seq,
    stride_partial_head,
    stride_partial_split,
    stride_lse_seq,
    stride_lse_head,
    stride_out_seq,
    stride_out_head,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    in_range = splits < num_splits
    lse = tl.load(
        lse_ptr + seq * stride_lse_seq + head * stride_lse_head + splits,
        mask=in_range,
        other=float("-inf"),
    )
    # A padding row of a CUDA graph's batch (context length 0) has no finite lse: it gets zeros.
    top = tl.max(lse, axis=0)
    weights = tl.exp(lse - tl.where(top > float("-inf"), top, 0.0))
    partial = tl.load(
        partial_ptr
        + seq * stride_partial_seq
        + head * stride_partial_head
        + splits[:, None] * stride_partial_split
        + dims[None, :],
        mask=in_range[:, None],
        other=0.0,
    )
    total = tl.sum(weights, axis=0)
    out = tl.sum(weights[:, None] * partial, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(
        out_ptr + seq * stride_out_seq + head * stride_out_head + dims,
        out.to(out_ptr.dtype.element_ty),
    )


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _choose_splits(device: torch.device, programs: int, max_len: int) -> int:
    if device.type != "cuda":
        return 1
    wanted = triton.cdiv(2 * _multiprocessors(device), programs)
    return max(1, min(wanted, max_len // _MIN_TOKENS_PER_SPLIT))


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                           context_lens: Tensor, scale: float, num_splits: int | None = None) -> Tensor:
    """As the reference; `num_splits` overrides the split heuristic (tests use it on CPU)."""
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, "head_dim must be a power of two"
    assert q.stride(2) == 1 and k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1
    group = num_q_heads // num_kv_heads

    # The table's width bounds every context without reading context_lens back to the host.
    max_len = block_tables.shape[1] * block_size
    if num_splits is None:
        num_splits = _choose_splits(q.device, batch * num_kv_heads, max_len)
    tokens_per_split = triton.cdiv(triton.cdiv(max_len, num_splits), _TILE) * _TILE
    num_splits = triton.cdiv(max_len, tokens_per_split)

    out = torch.empty((batch, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_splits == 1:
        partial, lse = out, out
        partial_strides = (out.stride(0), out.stride(1), 0)
        lse_strides = (0, 0)
    else:
        partial = torch.empty(
            (batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device
        )
        lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
        partial_strides = partial.stride()[:3]
        lse_strides = lse.stride()[:2]

    _paged_decode_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        partial,
        lse,
        scale,
        tokens_per_split,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        *partial_strides,
        *lse_strides,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        TILE=_TILE,
        WRITE_LSE=num_splits > 1,
        # Keeps the [16, head_dim] float32 tiles in registers at head_dim 128 (no spills).
        num_warps=4 if head_dim <= 64 else 8,
    )
    if num_splits > 1:
        _merge_splits_kernel[(batch, num_q_heads)](
            partial,
            lse,
            out,
            num_splits,
            *partial_strides,
            *lse_strides,
            out.stride(0),
            out.stride(1),
            SPLITS_PAD=triton.next_power_of_2(num_splits),
            HEAD_DIM=head_dim,
        )
    return out
