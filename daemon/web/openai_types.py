"""The OpenAI request bodies mgpud takes, and their translation into `generate` arguments.

Pydantic checks the shape (types, which fields); the ranges are the control protocol's
(`ipc.schema`, checked once when the arguments are built), so an HTTP client and a
ZeroMQ client meet the same limits with the same words.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from mgpud.ipc.schema import BadRequest, check_args
from pydantic import BaseModel, ConfigDict, Field

from .failures import ApiError, invalid

MAX_CHOICES = 16  # `n`: choices per prompt
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the daemon's
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default (the control protocol's is greedy)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields of other servers are not errors

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM's extension
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None  # vLLM's extension
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None


def chat_args(req: ChatRequest) -> dict[str, Any]:
    """The `generate` arguments of one choice of a chat request."""
    messages = [{"role": m.role, "content": m.content if isinstance(m.content, str)
                 else "".join(p.text for p in m.content or [])} for m in req.messages]
    sampling = _sampling(req, req.max_completion_tokens or req.max_tokens)
    if req.logprobs:
        sampling["logprobs"] = req.top_logprobs or 0
    elif req.top_logprobs:
        raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
    return {"model": req.model, "messages": messages, **sampling}


def completion_args(req: CompletionRequest) -> list[dict[str, Any]]:
    """The `generate` arguments of each prompt of a completion request."""
    if req.suffix:
        raise invalid("suffix is not supported (no model here is trained for infilling)", "suffix")
    sampling = _sampling(req, req.max_tokens or COMPLETION_MAX_TOKENS)
    if req.logprobs is not None:
        sampling["logprobs"] = req.logprobs
        if req.echo:
            sampling["prompt_logprobs"] = req.logprobs
    prompts = req.prompt if isinstance(req.prompt, list) and req.prompt and not isinstance(req.prompt[0], int) \
        else [req.prompt]
    return [{"model": req.model, "prompt": p, **sampling} for p in prompts]


def checked(args: dict[str, Any], choice: int) -> dict[str, Any]:
    """args for choice `choice` (a seed moves on per choice), checked against the schema."""
    if choice and args.get("seed") is not None:
        args = {**args, "seed": args["seed"] + choice}
    try:
        return check_args("generate", {**args, "stream": True})
    except BadRequest as exc:
        message = exc.message.removeprefix("generate: ")
        found = re.search(r"argument '(\w+)'", message)
        raise invalid(message, found.group(1) if found else None) from None


def _sampling(req: _Sampling, max_tokens: int | None) -> dict[str, Any]:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise invalid(f"{name} is not supported; leave it at 0", name)
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    values = {"max_tokens": max_tokens, "top_p": req.top_p, "top_k": req.top_k, "seed": req.seed,
              "stop": stop or None, "ignore_eos": req.ignore_eos,
              "temperature": DEFAULT_TEMPERATURE if req.temperature is None else req.temperature}
    return {k: v for k, v in values.items() if v is not None}


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """Pydantic's first complaint as OpenAI's 400."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request body"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    return invalid(f"{'.'.join(loc) or 'body'}: {first.get('msg')}", ".".join(loc) or None)
