"""Turning what a user sends (text, token ids, chat messages) into checked prompt ids."""

from __future__ import annotations

from typing import Any

from .errors import InvalidRequest
from .tokenizer import Tokenizer


def prompt_ids(tokenizer: Tokenizer, vocab_size: int, max_model_len: int,
               prompt: str | list[int] | None, messages: list[dict[str, Any]] | None) -> list[int]:
    if (prompt is None) == (messages is None):
        raise InvalidRequest("give exactly one of prompt (text or token ids) and messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise InvalidRequest("messages must be a non-empty list of {role: str, content: str}")
        ids = tokenizer.encode_chat(messages)
    elif isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
        if any(t < 0 or t >= vocab_size for t in ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab_size})")
    else:
        raise InvalidRequest("prompt must be a string or a list of integer token ids")
    if not ids:
        raise InvalidRequest("prompt is empty")
    if len(ids) + 1 > max_model_len:
        raise InvalidRequest(f"prompt is {len(ids)} tokens but max_model_len is {max_model_len}: "
                             "shorten the prompt or load the model with a larger max_model_len")
    return ids
