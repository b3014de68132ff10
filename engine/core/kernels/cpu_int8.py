"""The CPU weight-only int8 matmul (cpu_int8.c), built on first use by cbuild.py.

torch's own CPU int8 matmul (`torch._weight_int8pack_mm`) wants bf16 activations and
scales (with float32 ones it ran ~10x slower than a float32 F.linear), and forks its
threads for every layer however small; this kernel computes in float32, reads the int8
weights once per call, and keeps small layers on one thread.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor

from . import cbuild

SOURCE = Path(__file__).with_name("cpu_int8.c")
ROWS = 4  # the kernel's output channels per tile (ROWS in the C file): its scratch is sized by it

_P, _I64 = ctypes.c_void_p, ctypes.c_int64
_ARGTYPES = [_P, _I64, _I64, _I64, _P, _P, _P, _I64, _P, ctypes.c_int]


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = cbuild.load(SOURCE, "CPU int8 matmul", ["-fopenmp"])
    if lib is not None:
        lib.mgpud_int8_linear.argtypes = _ARGTYPES
        lib.mgpud_int8_linear.restype = None
    return lib


def available() -> bool:
    return _library() is not None


def linear(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    """(x @ weight^T) * scale in x's dtype: x [..., K] on the CPU, weight int8 [N, K]
    contiguous, scale float32 [N]. Only where available()."""
    lib = _library()
    assert lib is not None and weight.dtype == torch.int8 and scale.dtype == torch.float32
    lead, (n, k) = x.shape[:-1], weight.shape
    flat = x.reshape(-1, k)
    if flat.dtype != torch.float32 or flat.stride(-1) != 1:
        flat = flat.float().contiguous()
    m, threads = len(flat), torch.get_num_threads()
    out = torch.empty(m, n, dtype=torch.float32)
    scratch = torch.empty(threads * m * ROWS, dtype=torch.float32)
    cbuild.call("mgpud::cpu_int8_linear", lib.mgpud_int8_linear, flat.data_ptr(), m, k, flat.stride(0),
                weight.data_ptr(), scale.data_ptr(), out.data_ptr(), n, scratch.data_ptr(), threads)
    return out.to(x.dtype).view(*lead, n)
