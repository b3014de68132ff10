"""Torch implementations of the engine's kernels.

These are the numerical specification the Triton kernels are tested against, and the
production path on CPU devices, so they stay lean: no Python loops over sequences or heads.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

FP8 = torch.float8_e4m3fn  # the fp8 KV cache's dtype (e4m3: more mantissa than e5m2, range enough for K/V)
FP8_MAX = torch.finfo(FP8).max


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, x.shape[-1:], weight, eps)  # one op; the same values in float32
    # Same rounding points as transformers' LlamaRMSNorm: normalise in float32, round to the
    # input dtype, and only then scale by the weight.
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (normed.to(x.dtype) * weight).to(x.dtype)


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    # The sum is rounded to the input dtype before normalising, as transformers' residual add is.
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def silu_and_mul(x: Tensor) -> Tensor:
    inter = x.shape[-1] // 2
    if x.dtype == torch.float32:  # no conversions: at batch 1 each op's fixed cost is what counts
        return F.silu(x[..., :inter]) * x[..., inter:]
    xf = x.float()
    return (F.silu(xf[..., :inter]) * xf[..., inter:]).to(x.dtype)


def _rope_kind(scaling: dict | None) -> str:
    if not scaling:
        return "default"
    return scaling.get("rope_type") or scaling.get("type") or "default"


def _llama3_inv_freq(inv_freq: Tensor, scaling: dict) -> Tensor:
    # Llama 3.1's frequency-dependent interpolation: long wavelengths are slowed by `factor`,
    # short ones kept, and the band between them blended smoothly.
    factor = scaling["factor"]
    low = scaling["low_freq_factor"]
    high = scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, blended, scaled)


def build_rotary_cache(
    head_dim: int,
    max_positions: int,
    theta: float,
    scaling: dict | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """[max_positions, head_dim] float32: cos of the head_dim/2 frequencies, then their sin."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    kind = _rope_kind(scaling)
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)
    elif kind != "default":
        raise ValueError(
            f"rope scaling type {kind!r} is not supported; supported: default, linear, llama3"
        )
    positions = torch.arange(max_positions, dtype=torch.float32, device=device)
    freqs = positions[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    half = x.shape[-1] // 2
    if x.dtype == torch.float32:  # in place, fewer ops, and rounded as transformers rounds
        x1, x2 = x[..., :half], x[..., half:]
        first = (x1 * cos).sub_(x2 * sin)
        x2.mul_(cos).add_(x1 * sin)  # reads x1 before it is overwritten below
        x1.copy_(first)
        return
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    # Both halves are computed before the write: for float32 input xf aliases x.
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x.copy_(rotated)


def apply_rotary(q: Tensor, k: Tensor, positions: Tensor, cache: Tensor) -> None:
    half = cache.shape[-1] // 2
    cos_sin = cache.index_select(0, positions)
    cos = cos_sin[:, None, :half]
    sin = cos_sin[:, None, half:]
    _rotate(q, cos, sin)
    _rotate(k, cos, sin)


def store_kv(
    key: Tensor, value: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    if bool((slot_mapping < 0).any()):
        keep = (slot_mapping >= 0).nonzero().squeeze(1)
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    # Caches are allocated contiguous, so block and offset flatten into one slot index.
    _slots(k_cache).index_copy_(0, slot_mapping, _stored(key, k_cache.dtype))
    _slots(v_cache).index_copy_(0, slot_mapping, _stored(value, v_cache.dtype))


# index_copy_ has no float8 kernel on CPU: an fp8 cache is written as its bytes.
def _slots(cache: Tensor) -> Tensor:
    slots = cache.view(-1, *cache.shape[2:])
    return slots.view(torch.uint8) if cache.dtype == FP8 else slots


def _stored(x: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype != FP8:
        return x.to(dtype)
    # Saturated: a value past fp8's range would turn into NaN.
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)


def _widen(x: Tensor, like: Tensor) -> Tensor:
    """Cached K/V as attention reads them: an fp8 cache is widened to the queries' dtype."""
    return x if x.dtype == like.dtype else x.to(like.dtype)


# Grow-only scratch for the K/V gather, per thread, device and dtype. Allocating the
# gather's tens of MB afresh each call costs page faults whenever the allocator has handed
# the memory back to the OS: measured 40 ms instead of 14 ms per call at batch 64 / context 512.
class _Scratch(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}


_scratch = _Scratch()


def _gather_buffer(elements: int, like: Tensor) -> Tensor:
    key = (like.device, like.dtype)
    buffer = _scratch.buffers.get(key)
    if buffer is None or buffer.numel() < elements:
        buffer = torch.empty(elements, dtype=like.dtype, device=like.device)
        _scratch.buffers[key] = buffer
    return buffer[:elements]


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                           context_lens: Tensor, scale: float) -> Tensor:
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    num_blocks = (int(context_lens.max()) + block_size - 1) // block_size
    length = num_blocks * block_size

    # One gather per call, straight into the [B, nkv, L, d] layout attention wants: rows of
    # d elements picked by flat index run ~2x faster on CPU than k_cache[tables] followed by
    # a transpose. K/V stay at nkv heads; the query heads of a group share them through the
    # [B, nkv, group, d] view of q instead of a repeat_interleave.
    tables = block_tables[:, :num_blocks].long()
    slots = tables[:, :, None] * block_size + torch.arange(block_size, device=q.device)
    heads = torch.arange(num_kv_heads, device=q.device)
    rows = (slots.view(batch, 1, length) * num_kv_heads + heads[None, :, None]).view(-1)
    shape = (batch, num_kv_heads, length, head_dim)
    gathered = _gather_buffer(2 * rows.numel() * head_dim, k_cache).view(2, rows.numel(), head_dim)
    keys = _widen(torch.index_select(k_cache.view(-1, head_dim), 0, rows, out=gathered[0]).view(shape), q)
    values = _widen(torch.index_select(v_cache.view(-1, head_dim), 0, rows, out=gathered[1]).view(shape), q)
    positions = torch.arange(length, device=q.device)
    mask = (positions[None, :] < context_lens[:, None].to(positions.dtype))[:, None, None, :]

    grouped_q = q.reshape(batch, num_kv_heads, group, head_dim)
    out = F.scaled_dot_product_attention(grouped_q, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(batch, num_q_heads, head_dim)


def paged_prefill_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                            context_len: int, scale: float) -> Tensor:
    """One sequence's n query tokens [n, nq, d], the last at position context_len - 1, each
    attending causally over the cache -> [n, nq, d]. Gathers the context first."""
    n, block_size = q.shape[0], k_cache.shape[1]
    blocks = block_table[:-(-context_len // block_size)].long()
    keys = _widen(k_cache.index_select(0, blocks).flatten(0, 1)[:context_len], q)
    values = _widen(v_cache.index_select(0, blocks).flatten(0, 1)[:context_len], q)
    rows = torch.arange(n, device=q.device)[:, None] + (context_len - n)
    mask = torch.arange(context_len, device=q.device)[None, :] <= rows
    return causal_attention(q, keys, values, scale, mask)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """Attention over tokens-first tensors (q [n, nq, d], k/v [m, nkv, d]) -> [n, nq, d];
    `mask` [n, m] (True = attend), else causal with n == m."""
    heads_first = [x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)]
    out = F.scaled_dot_product_attention(*heads_first, attn_mask=mask, is_causal=mask is None,
                                         scale=scale, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)
