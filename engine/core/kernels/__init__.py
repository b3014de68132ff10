"""Kernels of the engine's forward pass, dispatched per call.

Triton runs when the tensor is on CUDA, or everywhere when ``MGPUD_KERNELS=triton`` (tests
set that together with ``TRITON_INTERPRET=1`` on CPU). Otherwise the torch reference runs,
which is the production path on CPU devices, except for paged attention: there a C kernel
built on this machine (``cpu_attention``) reads the cache in place where it builds.

The Triton modules are imported on first use only: ``TRITON_INTERPRET`` must be set before
their ``@triton.jit`` decorators run, and the engine must import where Triton cannot launch.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from torch import Tensor

from . import cpu_attention, reference
from .reference import build_rotary_cache

__all__ = [
    "add_rms_norm",
    "apply_rotary",
    "build_rotary_cache",
    "paged_decode_attention",
    "paged_prefill_attention",
    "rms_norm",
    "silu_and_mul",
    "store_kv",
    "use_triton",
]

# Which Triton module holds each kernel.
_TRITON_MODULES = {
    "rms_norm": "triton_norm",
    "add_rms_norm": "triton_norm",
    "silu_and_mul": "triton_activation",
    "apply_rotary": "triton_rotary",
    "store_kv": "triton_cache",
    "paged_decode_attention": "triton_attention",
}


def use_triton(x: Tensor) -> bool:
    """The one dispatch decision: Triton for CUDA tensors or when forced by the environment."""
    return x.is_cuda or os.environ.get("MGPUD_KERNELS") == "triton"


def _impl(name: str, x: Tensor):
    if use_triton(x):
        module: ModuleType = importlib.import_module(f".{_TRITON_MODULES[name]}", __name__)
        return getattr(module, name)
    return getattr(reference, name)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """[T, H] -> [T, H], as transformers' LlamaRMSNorm (weight applied after rounding)."""
    return _impl("rms_norm", x)(x, weight, eps)


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual); may overwrite x and residual."""
    return _impl("add_rms_norm", x)(x, residual, weight, eps)


def silu_and_mul(x: Tensor) -> Tensor:
    """[T, 2I] -> [T, I]: silu(gate) * up, gate being the first half."""
    return _impl("silu_and_mul", x)(x)


def apply_rotary(q: Tensor, k: Tensor, positions: Tensor, cache: Tensor) -> None:
    """Rotate q [T, nq, d] and k [T, nkv, d] in place (neox style) at int64 positions [T]."""
    _impl("apply_rotary", q)(q, k, positions, cache)


def store_kv(
    key: Tensor, value: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """Write token t's key/value [T, nkv, d] to cache slot slot_mapping[t]; -1 skips it."""
    _impl("store_kv", key)(key, value, k_cache, v_cache, slot_mapping)


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                           context_lens: Tensor, scale: float) -> Tensor:
    """One query token per sequence [B, nq, d] over its paged KV cache -> [B, nq, d]."""
    if not use_triton(q):
        out = cpu_attention.paged_attention(q, k_cache, v_cache, block_tables, context_lens, 1, scale)
        if out is not None:
            return out
    return _impl("paged_decode_attention", q)(
        q, k_cache, v_cache, block_tables, context_lens, scale
    )


def paged_prefill_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                            context_len: int, scale: float) -> Tensor:
    """One sequence's n query tokens [n, nq, d], the last at position context_len - 1, over
    its paged KV cache (this chunk's K/V stored already), causally -> [n, nq, d]."""
    if not use_triton(q):
        out = cpu_attention.paged_attention(q, k_cache, v_cache, block_table.view(1, -1), context_len, len(q), scale)
        if out is not None:
            return out
    return reference.paged_prefill_attention(q, k_cache, v_cache, block_table, context_len, scale)
