"""The mgpud engine: tensor-parallel LLM inference with a paged KV cache and continuous
batching. A library; it knows nothing of the control protocol (see docs/engine-api.md).

One room per concern:
- `core/`: one replica: the owner-side `LLMEngine`, worker processes, model code,
  layers, kernels, KV cache, scheduler, sampler, loader, tokenizer.
- `serving/`: the front door over replicas: `ModelGroup` (validates and tokenizes each
  request once), replicas, router, device pool, request metrics.
- `hosts/`: what this machine has: devices (NVML or CPU virtual devices), hardware figures.
- `planning/`: which (tp, dp) shapes fit, and why, without loading anything.
- `store/`: where model directories come from (the embedded demo model).
`config.py` and `exceptions.py` are the vocabulary all of them share.

Names are imported on first use, so that `mgpud.engine.hosts` or `.planning` do not
pay for importing torch and the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EngineConfig": "config", "ModelConfig": "config",
    "EngineDead": "exceptions", "EngineError": "exceptions", "InvalidRequest": "exceptions",
    "ModelLoadError": "exceptions",
    "RequestOutput": "core.outputs", "RequestStream": "core.outputs", "TokenLogprob": "core.outputs",
    "SamplingParams": "core.sampling", "ModelGroup": "serving.group", "DevicePool": "serving.pool",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
