"""One generation on the daemon's side: the request's handle, its outputs turned into
frames and a final result, and engine errors turned into protocol errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mgpud.ipc import errors as codes
from mgpud.ipc.errors import MgpudError

from .histograms import ObservedOutputs

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
HTTP_CLIENT = b"http"  # the client identity of HTTP calls (ZeroMQ clients have their own)


@dataclass(eq=False)  # hashed by identity: a model holds a set of them
class Call:
    """A running request: where its frames go, and how to cancel it."""

    client: bytes  # the ZeroMQ identity of the client that sent it
    op: str
    emit: Emit  # sends a frame to the client
    cancelled: bool = False
    on_cancel: Callable[[], None] | None = None
    request_id: str | None = None  # a generation's daemon-wide id: any client may cancel it by that
    started_at: float | None = None  # time.time() when a generation began

    def cancel(self) -> None:
        self.cancelled = True
        if self.on_cancel:
            self.on_cancel()


async def collect(name: str, outputs: asyncio.Queue[Any], emit: Emit | None) -> dict[str, Any]:
    """Read a request's RequestOutputs until the last; frames to `emit`; the final result."""
    observed = ObservedOutputs(name, outputs)  # times tokens; the histograms at the end
    token_ids: list[int] = []
    text: list[str] = []
    asked: dict[str, Any] = {}  # the request's logprobs and prompt_logprobs, when asked for
    while True:
        out = await observed.get()
        token_ids += out.new_token_ids
        text.append(out.new_text)
        logprobs = _gather_logprobs(out, asked)
        if emit and (out.new_text or out.new_token_ids):
            emit({"text": out.new_text, "token_ids": out.new_token_ids, **logprobs})
        if out.finished:
            break
    if out.finish_reason in ("error", "replica_failed"):
        raise MgpudError(codes.REPLICA_FAILED, f"{name}: {out.error}")
    return {
        "model": name,
        "text": "".join(text),
        "token_ids": token_ids,
        "finish_reason": out.finish_reason,
        "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                  "total_tokens": out.prompt_tokens + out.completion_tokens},
        "timings": timings(out),
        **asked,
    }


def _gather_logprobs(out: Any, asked: dict[str, Any]) -> dict[str, Any]:
    """out's logprobs as its frame carries them (nothing when not asked for); all the
    request's, and its prompt logprobs, gathered into `asked` for the result."""
    if out.prompt_logprobs is not None:
        asked["prompt_logprobs"] = [None if e is None else _logprob(e) for e in out.prompt_logprobs]
        asked["prompt_token_ids"] = out.prompt_token_ids
    if out.logprobs is None:
        return {}
    entries = [_logprob(e) for e in out.logprobs]
    asked.setdefault("logprobs", []).extend(entries)
    return {"logprobs": entries}


def _logprob(entry: Any) -> dict[str, Any]:
    """A TokenLogprob on the wire: `top` is a list of [token id, logprob] pairs."""
    return {"token_id": entry.token_id, "logprob": entry.logprob, "top": entry.top}


def timings(out: Any) -> dict[str, float | None]:
    """Milliseconds from the request's arrival, and decode speed, from its final output."""
    def ms(t: float | None) -> float | None:
        return None if t is None else round(1000 * (t - out.arrival_time), 3)

    decode_s = (out.finished_time or 0) - (out.first_token_time or 0)
    return {
        "queue_ms": ms(out.first_scheduled_time),
        "ttft_ms": ms(out.first_token_time),
        "total_ms": ms(out.finished_time),
        "decode_tokens_per_s": round((out.completion_tokens - 1) / decode_s, 2)
        if out.first_token_time and out.completion_tokens > 1 and decode_s > 0 else None,
    }


def generation_error(name: str, exc: Exception) -> MgpudError:
    from mgpud.engine.exceptions import EngineDead, EngineError, InvalidRequest

    if isinstance(exc, MgpudError):
        return exc
    if isinstance(exc, InvalidRequest):
        return MgpudError(codes.INVALID_REQUEST, f"{name}: {exc}")
    if isinstance(exc, EngineDead):
        return MgpudError(codes.REPLICA_FAILED, f"{name}: {exc}")
    if isinstance(exc, EngineError):
        return MgpudError(codes.UNAVAILABLE, f"{name}: {exc}")
    log.exception("generation on %s failed", name)
    return MgpudError(codes.INTERNAL, f"{name}: {type(exc).__name__}: {exc}")
