"""A model read once by the serving layer and shared by all its replicas: the resolved
directory, its config, its tokenizer (read beside the replicas' load) and the context
length it is served with."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..config import ModelConfig
from ..exceptions import ModelLoadError
from .loader import check_checkpoint
from .tokenizer import Tokenizer

T = TypeVar("T")


@dataclass(frozen=True)
class PreparedModel:
    dir: Path
    config: ModelConfig
    max_model_len: int  # tokens per sequence, prompt and output together
    _tokenizer: Future[Tokenizer] = field(repr=False, compare=False)

    @property
    def tokenizer(self) -> Tokenizer:
        """Read in a thread of its own, beside the workers' load (it takes a good part of a
        second); raises ModelLoadError when it cannot be read."""
        return self._tokenizer.result()

    @classmethod
    def open(cls, model_dir: Path, max_model_len: int | None) -> PreparedModel:
        """Read the config and check the weights (raises ModelLoadError); start reading the
        tokenizer."""
        config = check_model_dir(model_dir)
        return cls(model_dir, config, config.resolve_max_model_len(max_model_len), _in_thread(Tokenizer, model_dir))


def _in_thread(make: Callable[[Path], T], arg: Path) -> Future[T]:
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(make(arg))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="mgpud-tokenizer", daemon=True).start()
    return future


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
