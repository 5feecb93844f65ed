"""The OpenAI-compatible HTTP server: request schema -> one engine call -> response schema.

Routes: POST /v1/chat/completions, POST /v1/completions (both with SSE streaming), GET /v1/models,
GET /health (the process is alive), GET /ready (the model is loaded and warm).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from typing import AsyncIterator

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .config import LimitsSection
from .engines.base import Engine, GenerationRequest, SamplingParams, TokenEvent
from .schema import ChatCompletionRequest, CompletionRequest, error_body


class RequestError(Exception):
    """A client error, answered with the OpenAI error schema."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), self.status)


def create_app(engine: Engine, limits: LimitsSection, load_in_background: bool = True) -> Starlette:
    """Build the ASGI app; with load_in_background the engine loads while /health already answers."""
    state = {"load_error": None}

    def load() -> None:
        try:
            engine.load()
        except Exception as exc:  # reported by /ready and in the log; the process stays up
            state["load_error"] = str(exc)
            raise

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> JSONResponse:
        if engine.ready:
            return JSONResponse({"status": "ready", "model": engine.model_name})
        detail = state["load_error"] or "model is loading"
        return JSONResponse({"status": "not ready", "detail": detail}, 503)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": engine.model_name, "object": "model", "created": 0, "owned_by": "deepfleet"}]})

    async def chat_completions(request: Request):
        try:
            body = await _parse(request, ChatCompletionRequest)
            prompt = _checked_prompt(engine.encode_chat([m.model_dump() | {"content": m.text()} for m in body.messages]), limits)
            return await _respond(engine, body, prompt, limits, chat=True)
        except RequestError as exc:
            return exc.response()

    async def completions(request: Request):
        try:
            body = await _parse(request, CompletionRequest)
            prompt = _checked_prompt(engine.encode_text(body.prompt), limits)
            return await _respond(engine, body, prompt, limits, chat=False)
        except RequestError as exc:
            return exc.response()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        if engine.ready:
            pass
        elif load_in_background:
            threading.Thread(target=load, name="model-load", daemon=True).start()
        else:
            load()
        yield

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


async def _parse(request: Request, schema: type[BaseModel]):
    try:
        payload = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise RequestError(400, f"invalid request: {param}: {first['msg']}", param=param) from None


def _checked_prompt(prompt: list[int], limits: LimitsSection) -> list[int]:
    if not prompt:
        raise RequestError(400, "the prompt is empty", param="messages")
    if len(prompt) > limits.max_prompt_tokens:
        raise RequestError(400, f"the prompt has {len(prompt)} tokens; the limit is "
                           f"{limits.max_prompt_tokens}", param="messages", code="context_length_exceeded")
    return prompt


async def _respond(engine: Engine, body, prompt: list[int], limits: LimitsSection, chat: bool):
    if body.model != engine.model_name:
        raise RequestError(404, f"model '{body.model}' does not exist; this server serves "
                           f"'{engine.model_name}'", param="model", code="model_not_found")
    if not engine.ready:
        raise RequestError(503, "the model is still loading; retry shortly", type_="server_error")
    max_tokens = body.requested_max_tokens() or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise RequestError(400, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens}",
                           param="max_tokens")
    sampling = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, stop=body.stop_strings(), seed=body.seed)
    prefix = "chatcmpl" if chat else "cmpl"
    generation = GenerationRequest(f"{prefix}-{uuid.uuid4().hex}", prompt, sampling)
    shape = _ResponseShape(generation.request_id, engine.model_name, chat, len(prompt))
    events = engine.generate(generation)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(shape, events, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    text, finish, completion_tokens = [], None, 0
    try:
        async for event in events:
            text.append(event.text)
            finish, completion_tokens = event.finish_reason, event.completion_tokens
    finally:
        await events.aclose()
    return JSONResponse(shape.full("".join(text), finish, completion_tokens))


class _ResponseShape:
    """Builds OpenAI response and chunk bodies for one request."""

    def __init__(self, request_id: str, model: str, chat: bool, prompt_tokens: int):
        self.request_id, self.model, self.chat, self.prompt_tokens = request_id, model, chat, prompt_tokens
        self.created = int(time.time())

    def _envelope(self, choices: list, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.request_id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def full(self, text: str, finish: str | None, completion_tokens: int) -> dict:
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if self.chat else {"index": 0, "text": text, "finish_reason": finish})
        return self._envelope([choice], chunk=False) | {"usage": self.usage(completion_tokens)}

    def chunk(self, text: str | None, finish: str | None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        return self._envelope([choice], chunk=True)


async def _sse(shape: _ResponseShape, events: AsyncIterator[TokenEvent], include_usage: bool):
    def frame(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    completion_tokens = 0
    try:
        if shape.chat:
            yield frame(shape.chunk(None, None, role=True))
        async for event in events:
            completion_tokens = event.completion_tokens
            if event.text or event.finish_reason:
                yield frame(shape.chunk(event.text, event.finish_reason))
        if include_usage:
            yield frame(shape._envelope([], chunk=True) | {"usage": shape.usage(completion_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        await events.aclose()
