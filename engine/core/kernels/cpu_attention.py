"""The CPU paged-attention kernel (cpu_attention.c), built on first use by cbuild.py; where
it does not build, or does not serve a call, the torch reference serves.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor

from . import cbuild

SOURCE = Path(__file__).with_name("cpu_attention.c")
DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # cache dtype -> the kernel's bf16 argument
MAX_HEADS = 256  # the kernel keeps one float per query head on its stack

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_ARGTYPES = [_P, _I64, _P, _P, _P, _INT, _P, _I64, _P, _I64, _I64, _INT, _INT, _INT, _INT, ctypes.c_float, _INT]


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = cbuild.load(SOURCE, "CPU attention")
    if lib is not None:
        lib.mgpud_paged_attention.argtypes = _ARGTYPES
        lib.mgpud_paged_attention.restype = ctypes.c_int
    return lib


def available() -> bool:
    return _library() is not None


def _serves(q: Tensor, k_cache: Tensor, v_cache: Tensor) -> bool:
    return (q.device.type == "cpu" and k_cache.dtype in DTYPES and q.shape[-1] % 8 == 0
            and q.shape[-2] <= MAX_HEADS and k_cache.is_contiguous() and v_cache.is_contiguous())


def _rows(x: Tensor) -> Tensor:
    """x itself where the kernel can read it (float32, heads packed in each token's row, as
    in a slice of the fused QKV output), else a float32 copy that is."""
    if x.dtype == torch.float32 and x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        return x
    return x.float().contiguous()


def _int32(x: Tensor) -> Tensor:
    """x as the kernel reads it: int32, each row contiguous (the step's tables already are)."""
    return x if x.dtype == torch.int32 and x.stride(-1) == 1 else x.to(torch.int32).contiguous()


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, lens: Tensor | int,
                    per_seq: int, scale: float) -> Tensor | None:
    """q [S * per_seq, nq, d] -> [S * per_seq, nq, d] in q's dtype; the query tokens of
    sequence s end at position lens[s] - 1 and attend causally over its cached K/V.
    None where the kernel does not serve: the caller runs the torch path then."""
    lib = _library()
    if lib is None or not _serves(q, k_cache, v_cache):
        return None
    q32, tables = _rows(q), _int32(block_tables)
    out = torch.empty(q.shape, dtype=torch.float32)
    if isinstance(lens, int):  # a prefill chunk's one length: a C array, not a tensor per layer
        one = (ctypes.c_int32 * 1)(lens)
        lens_at, nseq = ctypes.addressof(one), 1
    else:
        lens = _int32(lens)
        lens_at, nseq = lens.data_ptr(), lens.numel()
    args = (q32.data_ptr(), q32.stride(0), out.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
            DTYPES[k_cache.dtype], tables.data_ptr(), tables.stride(0), lens_at, nseq, per_seq,
            q.shape[1], k_cache.shape[2], q.shape[2], k_cache.shape[1], scale, torch.get_num_threads())
    status = cbuild.call("mgpud::cpu_paged_attention", lib.mgpud_paged_attention, *args)
    return None if status else out.to(q.dtype)
