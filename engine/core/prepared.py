"""A model read once by the serving layer and shared by all its replicas: the resolved
directory, its config, its tokenizer and the context length it is served with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from .loader import checkpoint_files
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class PreparedModel:
    dir: Path
    config: ModelConfig
    tokenizer: Tokenizer
    max_model_len: int  # tokens per sequence, prompt and output together

    @classmethod
    def open(cls, model_dir: Path, max_model_len: int | None) -> PreparedModel:
        """Read config and tokenizer and check the weights are there; raises ModelLoadError."""
        config = ModelConfig.from_dir(model_dir)
        config.check_supported()
        checkpoint_files(model_dir)
        return cls(model_dir, config, Tokenizer(model_dir), config.resolve_max_model_len(max_model_len))
