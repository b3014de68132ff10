"""The HTTP routes: OpenAI's models, chat completions and completions, plus /health and
/metrics. Every path but /health needs the API key when one is configured."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from mgpud.ipc.errors import MgpudError
from starlette.types import ASGIApp, Receive, Scope, Send

from . import shapes
from .failures import ApiError
from .openai_types import ChatRequest, CompletionRequest, chat_args, checked, completion_args, validation_error
from .runs import Run

if TYPE_CHECKING:
    from ..server import Daemon

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health",)  # answered without the API key: load balancers probe it


def build_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(title="mgpud", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Authorize, key=lambda: daemon.config.api_key)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}").response()

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors())).response()

    @app.get("/health")
    async def health() -> Response:
        serving = daemon.phase != "stopping"
        return Response(status_code=200 if serving else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from ..exposition import render

        body, content_type = render(daemon)
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": int(m.loaded_at or daemon.started_at),
             "owned_by": "mgpud", "root": m.model, "max_model_len": m.stats.max_model_len if m.stats else None}
            for m in daemon.models.describe_all() if m.state not in ("loading", "failed")]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        args = chat_args(body)
        choices = [checked(args, i) for i in range(body.n)]
        decode = _decoder(daemon, body.model)
        reply = shapes.Reply("chatcmpl", "chat.completion", body.model)
        if body.stream:
            events = await _opened(Run(daemon, choices))
            return _sse(_chat_stream(events, reply, decode, body.include_usage))
        results = await _until_disconnect(Run(daemon, choices), request)
        return JSONResponse(reply.body([shapes.chat_choice(i, r, decode) for i, r in enumerate(results)],
                                       usage=shapes.usage(results, 1)))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompts = completion_args(body)
        choices = [checked(args, i) for args in prompts for i in range(body.n)]
        decode = _decoder(daemon, body.model)
        reply = shapes.Reply("cmpl", "text_completion", body.model)
        echoes = [_prompt_text(args["prompt"], decode) if body.echo else None for args in choices]
        if body.stream:
            events = await _opened(Run(daemon, choices))
            return _sse(_completion_stream(events, reply, decode, echoes, body.include_usage, len(prompts)))
        results = await _until_disconnect(Run(daemon, choices), request)
        return JSONResponse(reply.body([shapes.completion_choice(i, r, decode, echoes[i])
                                        for i, r in enumerate(results)], usage=shapes.usage(results, len(prompts))))

    return app


class _Authorize:
    """Every path but OPEN_PATHS needs `Authorization: Bearer KEY` when a key is set. Plain
    ASGI rather than an `@app.middleware("http")` function: that wraps every response body
    in extra streams, a cost each SSE chunk of every stream would pay."""

    def __init__(self, app: ASGIApp, key: Callable[[], str | None]) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.key()
        if key and scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {key}".encode()):
                refusal = ApiError(401, "invalid_request_error", "a valid API key is required: send "
                                   "`Authorization: Bearer KEY` (the daemon's --api-key)", code="invalid_api_key")
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _decoder(daemon: Daemon, name: str) -> shapes.Decode:
    """The model's tokenizer (for token texts in logprobs and echo); 404 for an unknown model."""
    try:
        group = daemon.models.get(name).group
    except MgpudError as exc:
        raise ApiError.from_code(exc.code, exc.message, "model") from None
    if group is None:
        raise ApiError(503, "service_unavailable", f"{name} is not ready yet; retry once it is loaded")
    return group.model.tokenizer.decode


def _prompt_text(prompt: str | list[int], decode: shapes.Decode) -> str:
    return prompt if isinstance(prompt, str) else decode(prompt)


async def _until_disconnect(run: Run, request: Request) -> list[dict[str, Any]]:
    """The run's results; if the client goes away first, its generations are cancelled."""
    results = asyncio.ensure_future(run.results())
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait([results, gone], return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not results.done():
        run.cancel()
    return await results


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


Event = tuple[int, "dict[str, Any] | None", Any]  # (choice, frame, None) or (choice, None, end)


async def _opened(run: Run) -> AsyncIterator[Event]:
    """The run's events, once the first has come: a request the engine refuses at once (a
    prompt too long, say) still gets its HTTP error status rather than an error event."""
    events = _guarded(run)
    try:
        first = await anext(events)
    except _StreamFailed as failed:
        raise failed.error from None

    async def chained() -> AsyncIterator[Event]:
        yield first
        async for event in events:
            yield event

    return chained()


async def _guarded(run: Run) -> AsyncIterator[Event]:
    """The run's events; a choice that fails ends them with _StreamFailed. When the stream
    ends early (the client disconnected and Starlette cancelled it), the generations stop."""
    try:
        async for index, frame, end in run.events():
            if isinstance(end, BaseException):
                raise _StreamFailed(end if isinstance(end, ApiError) else ApiError(500, "internal_error", str(end)))
            yield index, frame, end
    finally:
        run.cancel()


class _StreamFailed(Exception):
    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events, `data: [DONE]` last; a failure after the first chunk arrives as
    OpenAI's error event before it."""
    async def lines() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield _data(event)
        except _StreamFailed as failed:
            yield _data(failed.error.body())
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _data(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


async def _chat_stream(events: AsyncIterator[Event], reply: shapes.Reply, decode: shapes.Decode,
                       include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    started: set[int] = set()
    results: dict[int, dict[str, Any]] = {}
    async for index, frame, end in events:
        if frame is not None:
            yield reply.body([shapes.chat_delta(index, frame, decode, index not in started)])
            started.add(index)
        else:
            results[index] = end
            yield reply.body([{"index": index, "delta": {} if index in started else {"role": "assistant"},
                               "logprobs": None, "finish_reason": shapes.finish_reason(end)}])
    if include_usage:
        yield reply.body([], usage=shapes.usage(_in_order(results), 1))


async def _completion_stream(events: AsyncIterator[Event], reply: shapes.Reply, decode: shapes.Decode,
                             echoes: list[str | None], include_usage: bool,
                             prompts: int) -> AsyncIterator[dict[str, Any]]:
    offsets = [len(e or "") for e in echoes]
    for index, echo in enumerate(echoes):
        if echo:
            yield reply.body([{"index": index, "text": echo, "logprobs": None, "finish_reason": None}])
    results: dict[int, dict[str, Any]] = {}
    async for index, frame, end in events:
        if frame is not None:
            yield reply.body([shapes.completion_piece(index, frame, decode, offsets[index])])
            offsets[index] += len(frame["text"])
        else:
            results[index] = end
            yield reply.body([{"index": index, "text": "", "logprobs": None,
                               "finish_reason": shapes.finish_reason(end)}])
    if include_usage:
        yield reply.body([], usage=shapes.usage(_in_order(results), prompts))


def _in_order(results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [results[i] for i in sorted(results)]
