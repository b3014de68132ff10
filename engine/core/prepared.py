"""A model read once by the serving layer and shared by all its replicas: the resolved
directory, its config, its tokenizer and the context length it is served with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from ..exceptions import ModelLoadError
from .loader import check_checkpoint
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class PreparedModel:
    dir: Path
    config: ModelConfig
    tokenizer: Tokenizer
    max_model_len: int  # tokens per sequence, prompt and output together

    @classmethod
    def open(cls, model_dir: Path, max_model_len: int | None) -> PreparedModel:
        """Read config and tokenizer and check the weights; raises ModelLoadError."""
        config = check_model_dir(model_dir)
        return cls(model_dir, config, Tokenizer(model_dir), config.resolve_max_model_len(max_model_len))


def check_model_dir(model_dir: Path) -> ModelConfig:
    """The directory's config, once it and the weights' files are found sound (a quick
    look: the config and the weights' headers, no tensor). Raises ModelLoadError."""
    if not model_dir.is_dir():
        what = "is not a directory" if model_dir.exists() else "does not exist"
        raise ModelLoadError(f"{model_dir} {what}: give a model directory (Hugging Face format: "
                             "config.json, *.safetensors, tokenizer.json) or `demo`")
    config = ModelConfig.from_dir(model_dir)
    config.check_supported()
    check_checkpoint(model_dir)
    return config
