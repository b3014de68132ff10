"""NVML (nvidia-ml-py) behind calls that never raise.

A GPU reading that fails must not take the daemon or the dashboard down (nvitop's rule):
callers get None and a sentence for the operator instead of an exception.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

# What an operator can do about the failures that have a remedy.
_HINTS = {
    "NVMLError_LibraryNotFound": "no NVIDIA driver on this host: libnvidia-ml.so.1 not found",
    "NVMLError_DriverNotLoaded": "the NVIDIA kernel driver is not loaded; check `nvidia-smi`",
    "NVMLError_NoPermission": "permission denied; run as a user allowed to query the GPU",
    "NVMLError_NotSupported": "this GPU or driver does not report it",
    "NVMLError_GpuIsLost": "the GPU fell off the bus; check `dmesg`, the GPU needs a reset",
}

_initialised: ModuleType | None = None  # the pynvml module nvmlInit succeeded on


def module() -> tuple[ModuleType | None, str | None]:
    """The initialised pynvml module, or None and why NVML cannot be used."""
    global _initialised
    try:
        mod = importlib.import_module("pynvml")
    except ImportError:
        return None, "NVML unavailable: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    if mod is _initialised:
        return mod, None
    _, reason = read(mod, "NVML init", "nvmlInit")
    if reason:
        return None, reason
    _initialised = mod
    return mod, None


def read(mod: ModuleType, what: str, fn: str, *args: Any) -> tuple[Any, str | None]:
    """(value, None) from `mod.fn(*args)`, or (None, reason) when it fails."""
    try:
        return getattr(mod, fn)(*args), None
    except Exception as exc:  # NVMLError, a symbol an old driver lacks, a bad string: all mean "unavailable"
        return None, explain(what, exc)


def explain(what: str, exc: Exception) -> str:
    hint = _HINTS.get(type(exc).__name__)
    text = f"{what} unavailable: {str(exc) or type(exc).__name__}"
    return f"{text}; {hint}" if hint else text
