"""Turning what a user sends (text, token ids, chat messages) into prompt ids the model
can take: tokenized once, here, and checked against the vocabulary and the context."""

from __future__ import annotations

from typing import Any

from ..core.prepared import PreparedModel
from ..exceptions import InvalidRequest


def prompt_ids(model: PreparedModel, prompt: str | list[int] | None,
               messages: list[dict[str, Any]] | None) -> list[int]:
    """The prompt's token ids; exactly one of prompt and messages is given (the door that
    took the request checked its shape). Raises InvalidRequest."""
    if messages is not None:
        ids = model.tokenizer.encode_chat(messages)
    elif isinstance(prompt, str):
        ids = model.tokenizer.encode(prompt)
    else:
        ids = list(prompt or [])
        vocab = model.config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})")
    if not ids:
        raise InvalidRequest("prompt is empty")
    if len(ids) + 1 > model.max_model_len:
        raise InvalidRequest(f"prompt is {len(ids)} tokens but max_model_len is {model.max_model_len}: "
                             "shorten the prompt or load the model with a larger max_model_len")
    return ids
