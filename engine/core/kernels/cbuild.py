"""The CPU kernels written in C (cpu_*.c): built here on first use, then loaded.

A C file is compiled with the system's C compiler (`$CC`, else cc or gcc) for this very
CPU (-march=native) into a per-user cache, named by a hash of the source, the compiler,
the flags and the CPU flags, so a machine builds it once and never loads a build made for
another CPU. Nothing prebuilt is shipped or downloaded. Where there is no compiler, or no
AVX2/FMA (the sources refuse to build then), or `MGPUD_CPU_KERNELS=torch`, `load` answers
None and the caller's torch path serves; the reason is logged once per kernel.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...hosts.cpu_features import cpu_flags

log = logging.getLogger(__name__)
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-D_GNU_SOURCE"]


def _cache_dirs() -> list[Path]:
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    explicit = os.environ.get("MGPUD_KERNEL_CACHE")
    dirs = [Path(explicit)] if explicit else []
    return [*dirs, Path(home) / "mgpud" / "kernels", Path(tempfile.gettempdir()) / f"mgpud-kernels-{os.getuid()}"]


def compiler() -> str | None:
    return next((c for c in (os.environ.get("CC"), "cc", "gcc") if c and shutil.which(c)), None)


def _build(cc: str, source: Path, flags: list[str]) -> Path:
    """The shared library for this source, compiler, flags and CPU, compiled unless cached."""
    version = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([source.read_text(), version, " ".join(flags),
                                    " ".join(sorted(cpu_flags()))]).encode()).hexdigest()[:16]
    problems = []
    for folder in _cache_dirs():
        target = folder / f"{source.stem}-{key}.so"
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # A private name, then an atomic rename: the ranks of a replica may race here.
            scratch = folder / f".{target.name}.{os.getpid()}"
            subprocess.run([cc, *flags, "-o", str(scratch), str(source), "-lm", "-lpthread"],
                           check=True, capture_output=True, text=True, timeout=120)
            os.replace(scratch, target)
            return target
        except OSError as exc:
            problems.append(f"{folder}: {exc}")
    raise OSError("no writable cache folder: " + "; ".join(problems))


def load(source: Path, what: str, extra_flags: Sequence[str] = ()) -> ctypes.CDLL | None:
    """The library built from `source` (compiled now unless cached), or None where the torch
    path must serve instead; `what` names the kernel in the one warning that says why."""
    if os.environ.get("MGPUD_CPU_KERNELS") == "torch":
        return None
    cc = compiler()
    if cc is None:
        log.warning("no C compiler (cc/gcc or $CC): the %s runs the slower torch path", what)
        return None
    try:
        return ctypes.CDLL(str(_build(cc, source, [*FLAGS, *extra_flags])))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        log.warning("the %s kernel did not build; the torch path serves: %s", what, detail)
        return None


def call(name: str, fn: Callable[..., int], *args: object) -> int:
    """fn(*args), inside a profiler range named `name` while profiling: profiles would not
    show a ctypes call otherwise."""
    if torch.autograd._profiler_enabled():
        with torch.profiler.record_function(name):
            return fn(*args)
    return fn(*args)
