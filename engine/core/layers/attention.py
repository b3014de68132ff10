"""Attention over the paged KV cache for a mixed batch of decodes and prefill chunks.

Tokens of a step are laid out decodes first (one query token each, served by the
paged decode kernel), then prefill chunks (several query tokens each).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import kernels


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


def _cached_context(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    blocks = cache.index_select(0, table.long())
    return blocks.flatten(0, 1)[:length]


def _prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: PrefillSpan,
             cache: KVCache, scale: float) -> torch.Tensor:
    n = span.end - span.start
    if span.context_len == n:
        mask, causal = None, True
    else:  # a later chunk, or a prompt whose prefix came from the cache
        k = _cached_context(cache[0], span.block_table, span.context_len)
        v = _cached_context(cache[1], span.block_table, span.context_len)
        past = span.context_len - n
        rows = torch.arange(n, device=q.device)[:, None] + past
        mask, causal = torch.arange(span.context_len, device=q.device)[None, :] <= rows, False
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)


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
