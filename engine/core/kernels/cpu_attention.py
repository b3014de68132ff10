"""The CPU paged-attention kernel (cpu_attention.c): built here on first use, then loaded.

The C file is compiled with the system's C compiler (`$CC`, else cc or gcc) for this very
CPU (-march=native) into a per-user cache, named by a hash of the source, the compiler
and the CPU flags, so a machine builds it once and never loads a build made for another
CPU. Nothing prebuilt is shipped or downloaded. Where there is no compiler, or no
AVX2/FMA, or `MGPUD_CPU_KERNELS=torch`, `available()` is False and the torch reference
serves; the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ...hosts.cpu_features import cpu_flags

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("cpu_attention.c")
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-D_GNU_SOURCE"]
DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # cache dtype -> the kernel's bf16 argument
MAX_HEADS = 256  # the kernel keeps one float per query head on its stack

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_ARGTYPES = [_P, _I64, _P, _P, _P, _INT, _P, _I64, _P, _I64, _I64, _INT, _INT, _INT, _INT, ctypes.c_float, _INT]


def _cache_dirs() -> list[Path]:
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    explicit = os.environ.get("MGPUD_KERNEL_CACHE")
    dirs = [Path(explicit)] if explicit else []
    return [*dirs, Path(home) / "mgpud" / "kernels", Path(tempfile.gettempdir()) / f"mgpud-kernels-{os.getuid()}"]


def _compiler() -> str | None:
    return next((c for c in (os.environ.get("CC"), "cc", "gcc") if c and shutil.which(c)), None)


def _build(compiler: str) -> Path:
    """The shared library for this source, compiler and CPU, compiled unless cached."""
    version = subprocess.run([compiler, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS),
                                    " ".join(sorted(cpu_flags()))]).encode()).hexdigest()[:16]
    problems = []
    for folder in _cache_dirs():
        target = folder / f"cpu_attention-{key}.so"
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # A private name, then an atomic rename: the ranks of a replica may race here.
            scratch = folder / f".{target.name}.{os.getpid()}"
            subprocess.run([compiler, *FLAGS, "-o", str(scratch), str(SOURCE), "-lm", "-lpthread"],
                           check=True, capture_output=True, text=True, timeout=120)
            os.replace(scratch, target)
            return target
        except OSError as exc:
            problems.append(f"{folder}: {exc}")
    raise OSError("no writable cache folder: " + "; ".join(problems))


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("MGPUD_CPU_KERNELS") == "torch":
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning("no C compiler (cc/gcc or $CC): CPU attention runs the slower torch path")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        log.warning("the CPU attention kernel did not build; the torch path serves: %s", detail)
        return None
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
    if torch.autograd._profiler_enabled():  # a named range, or profiles would not show the kernel
        with torch.profiler.record_function("mgpud::cpu_paged_attention"):
            status = lib.mgpud_paged_attention(*args)
    else:
        status = lib.mgpud_paged_attention(*args)
    return None if status else out.to(q.dtype)
