"""The mgpud engine: tensor-parallel LLM inference with a paged KV cache and continuous
batching. A library; it knows nothing of the control protocol (see docs/engine-api.md)."""

from .config import EngineConfig, ModelConfig
from .engine import LLMEngine
from .errors import EngineDead, EngineError, InvalidRequest, ModelLoadError
from .loader import LoadProgress
from .outputs import RequestOutput, RequestStream
from .sampling import SamplingParams

__all__ = [
    "EngineConfig", "EngineDead", "EngineError", "InvalidRequest", "LLMEngine", "LoadProgress",
    "ModelConfig", "ModelLoadError", "RequestOutput", "RequestStream", "SamplingParams",
]
