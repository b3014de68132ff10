"""Attention over the paged KV cache for a mixed batch of decodes and prefill chunks.

Tokens of a step are laid out decodes first (one query token each, served by the
paged decode kernel), then prefill chunks (several query tokens each).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import kernels
from ..kernels.reference import causal_attention


@dataclass
class PrefillSpan:
    start: int  # first token of this sequence in the step's flat batch
    end: int
    context_len: int  # tokens the chunk attends to, itself included
    block_table: torch.Tensor | None  # needed only when context_len > end - start


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64, -1 = do not cache
    num_decodes: int
    decode_block_tables: torch.Tensor  # [num_decodes, max_blocks] int32
    decode_context_lens: torch.Tensor  # [num_decodes] int32
    prefills: list[PrefillSpan]


KVCache = tuple[torch.Tensor, torch.Tensor]  # each [num_blocks, block_size, kv_heads, head_dim]


def _prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: PrefillSpan,
             cache: KVCache, scale: float) -> torch.Tensor:
    if span.context_len == span.end - span.start:  # a whole prompt, or its first chunk
        return causal_attention(q, k, v, scale)
    # A later chunk, or a prompt whose prefix came from the cache: its K/V are cached already.
    return kernels.paged_prefill_attention(q, cache[0], cache[1], span.block_table, span.context_len, scale)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    meta: AttentionMetadata, cache: KVCache, scale: float) -> torch.Tensor:
    """q [T, nq, d], k/v [T, nkv, d] of this step -> [T, nq, d]; caches this step's K/V."""
    kernels.store_kv(k, v, cache[0], cache[1], meta.slot_mapping)
    out = torch.empty_like(q)
    nd = meta.num_decodes
    if nd:
        out[:nd] = kernels.paged_decode_attention(
            q[:nd], cache[0], cache[1], meta.decode_block_tables, meta.decode_context_lens, scale)
    for span in meta.prefills:
        s, e = span.start, span.end
        out[s:e] = _prefill(q[s:e], k[s:e], v[s:e], span, cache, scale)
    return out
