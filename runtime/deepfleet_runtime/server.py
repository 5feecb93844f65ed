"""The OpenAI-compatible HTTP server: request schema -> one engine call -> response schema.

Routes: POST /v1/chat/completions, POST /v1/completions (both with SSE streaming), GET /v1/models,
GET /health (the process is alive), GET /ready (the model is loaded and warm), GET /metrics
(Prometheus). With reasoning_parser deepseek_r1, chat answers carry the <think> part in
reasoning_content. An engine that is itself an OpenAI server (vLLM: it has `openai_base_url`) gets
chat and completion requests forwarded unchanged (openai_proxy.py), and its metrics are appended
to /metrics.
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
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .config import LimitsSection
from .engines.base import Engine, GenerationRequest, SamplingParams, TokenEvent
from .engines.scheduler import CapacityError
from .metrics import CONTENT_TYPE, RuntimeMetrics
from .openai_proxy import OpenAIProxy
from .reasoning import ReasoningSplitter
from .schema import ChatCompletionRequest, CompletionRequest, error_body


class RequestError(Exception):
    """A client error, answered with the OpenAI error schema."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), self.status)


def create_app(engine: Engine, limits: LimitsSection, load_in_background: bool = True,
               reasoning_parser: str = "none", metrics: RuntimeMetrics | None = None,
               labels: dict[str, str] | None = None) -> Starlette:
    """Build the ASGI app; with load_in_background the engine loads while /health already answers.

    `labels` (e.g. the model release and quantisation) are reported by /ready, so a gateway can
    label its audit records with what actually served them."""
    state = {"load_error": None}
    metrics = metrics or RuntimeMetrics(engine)

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
            return JSONResponse({"status": "ready", "model": engine.model_name, **(labels or {})})
        if state["load_error"]:  # it will not become ready by waiting: say so, for deploys to stop waiting
            return JSONResponse({"status": "failed", "detail": state["load_error"]}, 503)
        return JSONResponse({"status": "not ready", "detail": "model is loading"}, 503)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": engine.model_name, "object": "model", "created": 0, "owned_by": "deepfleet"}]})

    proxy = OpenAIProxy(engine, limits, metrics) if getattr(engine, "openai_base_url", None) else None

    async def prometheus(_: Request) -> Response:
        own = metrics.render()
        if proxy is not None:  # the engine's own series (vllm:*) after ours
            own += (await engine.metrics_text()).encode()
        return Response(own, media_type=CONTENT_TYPE)

    def answer(route: str, chat: bool):
        schema = ChatCompletionRequest if chat else CompletionRequest
        if proxy is not None:
            async def forwarded(request: Request) -> Response:
                return await proxy.forward(request, route)

            return forwarded

        async def handler(request: Request):
            arrived = time.monotonic()
            try:
                body = await _parse(request, schema)
                _check_model(engine, body)
                if chat:
                    prompt = engine.encode_chat([m.model_dump() | {"content": m.text()} for m in body.messages])
                else:
                    prompt = engine.encode_text(body.prompt)
                _checked_prompt(prompt, limits)
                splitter = ReasoningSplitter(engine.reasoning_token_ids) if chat and reasoning_parser != "none" else None
                response = await _respond(engine, body, prompt, limits, chat, splitter,
                                          _Timing(metrics, arrived))
            except RequestError as exc:
                metrics.requests.labels(route, str(exc.status)).inc()
                return exc.response()
            metrics.requests.labels(route, "200").inc()
            metrics.prompt_tokens.inc(len(prompt))
            return response

        return handler

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
            Route("/metrics", prometheus),
            Route("/v1/models", models),
            Route("/v1/chat/completions", answer("chat", chat=True), methods=["POST"]),
            Route("/v1/completions", answer("completions", chat=False), methods=["POST"]),
        ],
        lifespan=lifespan,
    )


class _Timing:
    """Time to first token and inter-token latency of one request, into the histograms."""

    def __init__(self, metrics: RuntimeMetrics, arrived: float):
        self.metrics, self.last = metrics, arrived
        self.first = True

    def tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.monotonic()
        histogram = self.metrics.time_to_first_token if self.first else self.metrics.inter_token_latency
        histogram.observe(now - self.last)
        self.first, self.last = False, now
        self.metrics.generation_tokens.inc(count)


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


def _check_model(engine: Engine, body) -> None:
    if body.model != engine.model_name:
        raise RequestError(404, f"model '{body.model}' does not exist; this server serves "
                           f"'{engine.model_name}'", param="model", code="model_not_found")
    if not engine.ready:
        raise RequestError(503, "the model is not ready (loading or restarting); retry shortly",
                           type_="server_error")


async def _respond(engine: Engine, body, prompt: list[int], limits: LimitsSection, chat: bool,
                   splitter: ReasoningSplitter | None, timing: _Timing):
    max_tokens = body.requested_max_tokens() or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise RequestError(400, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens}",
                           param="max_tokens")
    sampling = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, stop=body.stop_strings(), seed=body.seed,
                              ignore_eos=body.ignore_eos)
    prefix = "chatcmpl" if chat else "cmpl"
    generation = GenerationRequest(f"{prefix}-{uuid.uuid4().hex}", prompt, sampling)
    shape = _ResponseShape(generation.request_id, engine.model_name, chat, len(prompt))
    events = engine.generate(generation)
    try:  # the first event comes before any byte is sent, so engine refusals are still HTTP errors
        first = await events.__anext__()
    except CapacityError as exc:
        await events.aclose()
        raise RequestError(400, str(exc), param="max_tokens") from None
    stream = _Stream(first, events, timing, splitter)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(shape, stream, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    reasoning, text, finish = [], [], None
    async for part in stream:
        reasoning.append(part.reasoning)
        text.append(part.content)
        finish = part.finish_reason or finish
    return JSONResponse(shape.full("".join(text), finish, stream.completion_tokens,
                                   "".join(reasoning) if splitter else None))


class _Part:
    __slots__ = ("reasoning", "content", "finish_reason")

    def __init__(self, reasoning: str, content: str, finish_reason: str | None):
        self.reasoning, self.content, self.finish_reason = reasoning, content, finish_reason


class _Stream:
    """An engine's events as (reasoning, content, finish) parts, with timing; closes the engine stream."""

    def __init__(self, first: TokenEvent, events: AsyncIterator[TokenEvent], timing: _Timing,
                 splitter: ReasoningSplitter | None):
        self.first, self.events, self.timing, self.splitter = first, events, timing, splitter
        self.completion_tokens = 0

    async def __aiter__(self):
        try:
            event = self.first
            while True:
                self.timing.tokens(event.completion_tokens - self.completion_tokens)
                self.completion_tokens = event.completion_tokens
                if self.splitter is None:
                    yield _Part("", event.text, event.finish_reason)
                else:
                    reasoning, content = self.splitter.feed(event.text, event.token_ids)
                    if event.finish_reason:
                        held_reasoning, held_content = self.splitter.flush()
                        reasoning, content = reasoning + held_reasoning, content + held_content
                    yield _Part(reasoning, content, event.finish_reason)
                if event.finish_reason:
                    return
                event = await self.events.__anext__()
        finally:
            await self.events.aclose()


class _ResponseShape:
    """Builds OpenAI response and chunk bodies for one request."""

    def __init__(self, request_id: str, model: str, chat: bool, prompt_tokens: int):
        self.request_id, self.model, self.chat, self.prompt_tokens = request_id, model, chat, prompt_tokens
        self.created = int(time.time())

    def envelope(self, choices: list, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.request_id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def full(self, text: str, finish: str | None, completion_tokens: int, reasoning: str | None) -> dict:
        if self.chat:
            message = {"role": "assistant", "content": text}
            if reasoning is not None:
                message = {"role": "assistant", "reasoning_content": reasoning, "content": text or None}
            choice = {"index": 0, "message": message, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        return self.envelope([choice], chunk=False) | {"usage": self.usage(completion_tokens)}

    def chunk(self, part: _Part | None, role: bool = False) -> dict:
        if not self.chat:
            return self.envelope([{"index": 0, "text": part.content, "finish_reason": part.finish_reason}], True)
        if role:
            return self.envelope([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None}], chunk=True)
        delta = {}
        if part.reasoning:
            delta["reasoning_content"] = part.reasoning
        if part.content:
            delta["content"] = part.content
        return self.envelope([{"index": 0, "delta": delta, "finish_reason": part.finish_reason}], chunk=True)


async def _sse(shape: _ResponseShape, stream: _Stream, include_usage: bool):
    def frame(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    if shape.chat:
        yield frame(shape.chunk(None, role=True))
    async for part in stream:
        if part.reasoning or part.content or part.finish_reason:
            yield frame(shape.chunk(part))
    if include_usage:
        yield frame(shape.envelope([], chunk=True) | {"usage": shape.usage(stream.completion_tokens)})
    yield "data: [DONE]\n\n"
