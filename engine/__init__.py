"""The mgpud engine: tensor-parallel LLM inference with a paged KV cache and continuous
batching. A library; it knows nothing of the control protocol (see docs/engine-api.md).

Names are imported on first use, so that `mgpud.engine.devices` or `.planner` do not
pay for importing torch and the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EngineConfig": "config", "ModelConfig": "config", "LLMEngine": "engine",
    "EngineDead": "errors", "EngineError": "errors", "InvalidRequest": "errors", "ModelLoadError": "errors",
    "LoadProgress": "loader", "RequestOutput": "outputs", "RequestStream": "outputs",
    "SamplingParams": "sampling", "ModelGroup": "group", "DevicePool": "pool",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
