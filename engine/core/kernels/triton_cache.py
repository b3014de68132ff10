"""Scatter of new keys and values into the paged KV cache, one program per token."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
                     stride_key_token, stride_key_head, stride_value_token, stride_value_head,
                     stride_cache_block, stride_cache_slot, stride_cache_head, num_heads, head_dim,
                     BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)
    # Slot -1 marks a token whose KV is not kept (e.g. padding).
    if slot >= 0:
        heads = tl.arange(0, BLOCK_H)
        dims = tl.arange(0, BLOCK_D)
        mask = (heads < num_heads)[:, None] & (dims < head_dim)[None, :]
        dest = (
            (slot // BLOCK_SIZE) * stride_cache_block
            + (slot % BLOCK_SIZE) * stride_cache_slot
            + heads[:, None] * stride_cache_head
            + dims[None, :]
        )
        key = tl.load(
            key_ptr + token * stride_key_token + heads[:, None] * stride_key_head + dims[None, :],
            mask=mask,
        )
        value = tl.load(
            value_ptr
            + token * stride_value_token
            + heads[:, None] * stride_value_head
            + dims[None, :],
            mask=mask,
        )
        tl.store(k_cache_ptr + dest, key.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dest, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    key: Tensor, value: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    tokens, heads, head_dim = key.shape
    assert key.stride(2) == 1 and value.stride(2) == 1, "the head dimension must be contiguous"
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1
    _store_kv_kernel[(tokens,)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        heads,
        head_dim,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
