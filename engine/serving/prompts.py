"""Turning what a user sends (text, token ids, chat messages) into prompt ids the model
can take: tokenized once, here, and checked against the vocabulary and the context.

A text far longer than the context is refused after tokenizing a bounded part of it:
no sound bound on characters per token exists for every tokenizer (normalizers and
pre-tokenizers may drop characters, an unknown-token can stand for a whole word), so
instead of a character cap the text is counted in pieces, and counting stops as soon as
the pieces hold more tokens than max_model_len. The work is then about max_model_len
tokens' worth of text, whatever the prompt's size; a prompt that fits is tokenized whole
(its ids must not depend on where the pieces were cut).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..core.prepared import PreparedModel
from ..core.sampling import SamplingParams
from ..core.tokenizer import Tokenizer
from ..exceptions import InvalidRequest

# Characters tokenized at a time while a long text is counted: small, so that what the
# tokenizer allocates for one piece stays small (64 Ki left the daemon's RSS 10% higher).
PIECE_CHARS = 1 << 14
# Tokens one cut between pieces may add or remove (a word split in two, a prefix space):
# subtracted per cut so that a text is never refused for what its cuts alone added.
CUT_SLACK = 4


def prompt_ids(model: PreparedModel, prompt: str | list[int] | None,
               messages: list[dict[str, Any]] | None) -> list[int]:
    """The prompt's token ids; exactly one of prompt and messages is given (the door that
    took the request checked its shape). Raises InvalidRequest."""
    if messages is not None:
        # The template writes any BOS itself, so the tokenizer must not add another.
        ids = _encode(model, model.tokenizer.render_chat(messages), special=False)
    elif isinstance(prompt, str):
        ids = _encode(model, prompt, special=True)
    else:
        ids = _token_ids(model, prompt or [])
    if not ids:
        raise InvalidRequest("prompt is empty")
    if len(ids) >= model.max_model_len:
        raise _too_long(str(len(ids)), model.max_model_len)
    return ids


def check_room(params: SamplingParams, prompt_tokens: int, max_model_len: int) -> None:
    """Refuse a max_tokens the context cannot hold (as vLLM does) rather than stop short of
    it silently; an omitted one (DEFAULT_MAX_TOKENS) stops where the context ends."""
    room = max_model_len - prompt_tokens
    if params.max_tokens is not None and params.max_tokens > room:
        raise InvalidRequest(f"max_tokens is {params.max_tokens} but the {prompt_tokens}-token prompt leaves "
                             f"{room} of max_model_len {max_model_len}: ask for at most {room} tokens, "
                             "shorten the prompt, or load the model with a larger max_model_len")


def _encode(model: PreparedModel, text: str, special: bool) -> list[int]:
    if len(text) > PIECE_CHARS:
        _refuse_if_longer(model.tokenizer, text, model.max_model_len)
    return model.tokenizer.encode(text, special)


def _refuse_if_longer(tokenizer: Tokenizer, text: str, limit: int) -> None:
    """Raise InvalidRequest as soon as text's pieces hold at least `limit` tokens."""
    count, done = 0, 0
    for cuts, piece in enumerate(_pieces(text)):
        count += len(tokenizer.encode(piece, special=False))
        done += len(piece)
        if (at_least := count - CUT_SLACK * cuts) >= limit:
            raise _too_long(f"at least {at_least}", limit, f" (counted in its first {done} characters)")


def _pieces(text: str) -> Iterator[str]:
    """text in slices of at most PIECE_CHARS, cut before a space where there is one in the
    slice's second half (word-level pre-tokenizers then see whole words)."""
    start = 0
    while start < len(text):
        end = min(start + PIECE_CHARS, len(text))
        if end < len(text):
            space = text.rfind(" ", start + PIECE_CHARS // 2, end)
            end = space if space > start else end
        yield text[start:end]
        start = end


def _token_ids(model: PreparedModel, ids: list[int]) -> list[int]:
    if len(ids) >= model.max_model_len:  # before the scan of a list that may hold 2^20 ids
        raise _too_long(str(len(ids)), model.max_model_len)
    vocab = model.config.vocab_size
    if ids and (min(ids) < 0 or max(ids) >= vocab):
        raise InvalidRequest(f"prompt token ids must be in [0, {vocab})")
    return list(ids)


def _too_long(tokens: str, max_model_len: int, where: str = "") -> InvalidRequest:
    return InvalidRequest(f"prompt is {tokens} tokens{where} but max_model_len is {max_model_len}: "
                          "shorten the prompt or load the model with a larger max_model_len")
