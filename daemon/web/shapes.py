"""OpenAI response objects built from `generate` frames and results: chat completions,
text completions, their stream chunks, usage and logprobs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

Decode = Callable[[list[int]], str]  # the model's tokenizer: token ids -> text
Entry = dict[str, Any]  # a generate logprob entry: {token_id, logprob, top: [[id, logprob], ...]}


class Reply:
    """The fixed fields of one response or stream: id, object type, creation time, model."""

    def __init__(self, prefix: str, kind: str, model: str) -> None:
        self.id, self.kind, self.model = f"{prefix}-{uuid.uuid4().hex}", kind, model
        self.created = int(time.time())

    def body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}


def finish_reason(result: dict[str, Any]) -> str:
    reason = result["finish_reason"]
    return reason if reason in ("stop", "length") else "abort"  # vLLM's word for a cancelled one


def usage(results: list[dict[str, Any]], prompts: int) -> dict[str, int]:
    """Token counts of a request: each prompt once (its n choices share it), every completion."""
    per_prompt = len(results) // prompts
    prompt = sum(r["usage"]["prompt_tokens"] for r in results[::per_prompt])
    completion = sum(r["usage"]["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# -- chat ---------------------------------------------------------------------------------

def chat_choice(index: int, result: dict[str, Any], decode: Decode) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": result["text"]},
            "logprobs": chat_logprobs(result.get("logprobs"), decode), "finish_reason": finish_reason(result)}


def chat_delta(index: int, frame: dict[str, Any], decode: Decode, first: bool) -> dict[str, Any]:
    delta = {"role": "assistant", "content": frame["text"]} if first else {"content": frame["text"]}
    return {"index": index, "delta": delta, "logprobs": chat_logprobs(frame.get("logprobs"), decode),
            "finish_reason": None}


def chat_logprobs(entries: list[Entry] | None, decode: Decode) -> dict[str, Any] | None:
    if entries is None:
        return None
    return {"content": [{**_token(e["token_id"], e["logprob"], decode),
                         "top_logprobs": [_token(t, lp, decode) for t, lp in e["top"]]} for e in entries]}


def _token(token_id: int, logprob: float, decode: Decode) -> dict[str, Any]:
    text = decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


# -- completions --------------------------------------------------------------------------

def completion_choice(index: int, result: dict[str, Any], decode: Decode, echo: str | None) -> dict[str, Any]:
    """`echo`: the prompt's text, put before the completion."""
    entries: list[Entry | None] = list(result.get("logprobs") or [])
    if echo is not None and result.get("prompt_logprobs") is not None:
        entries = _prompt_entries(result) + entries
    logprobs = completion_logprobs(entries, decode) if result.get("logprobs") is not None else None
    return {"index": index, "text": (echo or "") + result["text"], "logprobs": logprobs,
            "finish_reason": finish_reason(result)}


def completion_piece(index: int, frame: dict[str, Any], decode: Decode, offset: int) -> dict[str, Any]:
    logprobs = frame.get("logprobs")
    return {"index": index, "text": frame["text"], "finish_reason": None,
            "logprobs": completion_logprobs(logprobs, decode, offset) if logprobs is not None else None}


def completion_logprobs(entries: list[Entry | None], decode: Decode, offset: int = 0) -> dict[str, Any]:
    """The legacy shape: parallel lists of tokens, their logprobs, top maps and offsets.
    A None entry is the first prompt token, which has no logprob."""
    tokens, offsets = [], []
    for e in entries:
        offsets.append(offset)
        tokens.append(decode([e["token_id"]]))
        offset += len(tokens[-1])
    return {"tokens": tokens, "text_offset": offsets,
            "token_logprobs": [e["logprob"] if e.get("logprob") is not None else None for e in entries],
            "top_logprobs": [{decode([t]): lp for t, lp in e["top"]} if e.get("top") is not None else None
                             for e in entries]}


def _prompt_entries(result: dict[str, Any]) -> list[Entry]:
    """The prompt's tokens as entries; the first has neither logprob nor top tokens."""
    ids = result["prompt_token_ids"]
    given = result["prompt_logprobs"]
    return [{"token_id": ids[0], "logprob": None, "top": None}] + [
        {"token_id": token, "logprob": e["logprob"], "top": e["top"]} for token, e in zip(ids[1:], given[1:])]
