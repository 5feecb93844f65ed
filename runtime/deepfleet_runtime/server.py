"""The OpenAI-compatible HTTP server: request schema -> one engine call -> response schema.

Routes: POST /v1/chat/completions, POST /v1/completions (both with SSE streaming), GET /v1/models,
GET /health (the process is alive), GET /ready (the model is loaded and warm), GET /metrics
(Prometheus). With reasoning_parser deepseek_r1, chat answers carry the <think> part in
reasoning_content. An engine that is itself an OpenAI server (vLLM: it has `openai_base_url`) gets
chat and completion requests forwarded unchanged (openai_proxy.py), and its metrics are appended
to /metrics.
"""

from __future__ import annotations

import asyncio
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
from .engines.base import (Engine, EngineUnavailable, GenerationRequest, RequestFailed, SamplingParams,
                           TokenEvent)
from .engines.scheduler import CapacityError
from .metrics import CONTENT_TYPE, RuntimeMetrics
from .openai_proxy import OpenAIProxy
from .reasoning import ReasoningSplitter
from .schema import (OPTIONAL_PARAMETERS, TOO_DEEP, ChatCompletionRequest, CompletionRequest, error_body,
                     too_deeply_nested)


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
               labels: dict[str, str] | None = None, gpu_health=None) -> Starlette:
    """Build the ASGI app; with load_in_background the engine loads while /health already answers.

    `labels` (e.g. the model release and quantisation) are reported by /ready, so a gateway can
    label its audit records with what actually served them. With `gpu_health` (gpuhealth.GpuHealth),
    a GPU its policy calls unhealthy makes /ready answer 503 with the reasons."""
    state = {"load_error": None}
    metrics = metrics or RuntimeMetrics(engine, gpu_health=gpu_health)

    def load() -> None:
        try:
            engine.load()
        except Exception as exc:  # reported by /ready and in the log; the process stays up
            state["load_error"] = str(exc)
            raise

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> JSONResponse:
        reasons = gpu_health.reasons if gpu_health is not None else []
        if engine.ready and reasons:  # out of service: gateways stop routing here
            return JSONResponse({"status": "unhealthy", "detail": "; ".join(reasons), "gpu_health": reasons}, 503)
        if engine.ready:
            return JSONResponse({"status": "ready", "model": engine.model_name, **(labels or {})})
        failure = state["load_error"] or getattr(engine, "failure", None)
        if failure:  # it will not become ready by waiting: say so, for deploys and gateways to stop waiting
            return JSONResponse({"status": "failed", "detail": failure}, 503)
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
                _check_parameters(engine, body)
                if chat:
                    prompt = engine.encode_chat([m.model_dump() | {"content": m.text()} for m in body.messages])
                else:
                    prompt = engine.encode_text(body.prompt)
                _checked_prompt(prompt, limits)
                splitter = ReasoningSplitter(engine.reasoning_token_ids) if chat and reasoning_parser != "none" else None
                response = await _respond(engine, body, prompt, limits, chat, splitter,
                                          _Timing(metrics, arrived), request)
            except RequestError as exc:
                metrics.requests.labels(route, str(exc.status)).inc()
                return exc.response()
            metrics.requests.labels(route, "200").inc()
            metrics.prompt_tokens.inc(len(prompt))
            return response

        return handler

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        if gpu_health is not None:
            gpu_health.start()
        if engine.ready:
            pass
        elif load_in_background:
            threading.Thread(target=load, name="model-load", daemon=True).start()
        else:
            load()
        yield
        if gpu_health is not None:
            gpu_health.close()

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
    except RecursionError:
        raise RequestError(400, TOO_DEEP) from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"the request body must be a JSON object, not {type(payload).__name__}")
    if too_deeply_nested(payload):
        raise RequestError(400, TOO_DEEP)
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


def _check_context(engine: Engine, prompt_tokens: int, max_tokens: int) -> None:
    """Refuse a request whose prompt plus max_tokens does not fit the model's context window."""
    context = getattr(engine, "context_tokens", None)
    if context and prompt_tokens + max_tokens > context:
        raise RequestError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                           f"{prompt_tokens + max_tokens} tokens; the model has a context window of {context} "
                           "tokens: shorten the prompt or lower max_tokens", param="max_tokens",
                           code="context_length_exceeded")


def _check_parameters(engine: Engine, body) -> None:
    """Refuse parameters this engine does not implement, naming an engine that does."""
    implemented = getattr(engine, "parameters", frozenset())
    for name in body.requested_options():
        if name in implemented:
            continue
        label = _engine_label(engine)
        others = [other for other in OPTIONAL_PARAMETERS[name] if other != label]
        fix = (f"; the {others[0]} engine implements it (engine: {others[0]} in runtime.yaml), or leave it out"
               if others else "; no engine of this runtime implements it: leave it out")
        raise RequestError(400, f"'{name}' is not supported by the {label} engine{fix}", param=name)


def _engine_label(engine: Engine) -> str:
    return getattr(engine, "engine_name", None) or type(engine).__name__.removesuffix("Engine").lower()


def _check_model(engine: Engine, body) -> None:
    if body.model != engine.model_name:
        raise RequestError(404, f"model '{body.model}' does not exist; this server serves "
                           f"'{engine.model_name}'", param="model", code="model_not_found")
    if not engine.ready:
        raise RequestError(503, "the model is not ready (loading or restarting); retry shortly",
                           type_="server_error")


def _engine_error(exc: Exception) -> RequestError:
    """An engine's failure as an OpenAI server error: 503 when it cannot serve now, else 500."""
    status = 503 if isinstance(exc, EngineUnavailable) else 500
    return RequestError(status, str(exc), type_="server_error")


async def _until_disconnected(request: Request) -> None:
    """Returns when the client has gone away (its body was read already: only disconnect is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _respond(engine: Engine, body, prompt: list[int], limits: LimitsSection, chat: bool,
                   splitter: ReasoningSplitter | None, timing: _Timing, request: Request):
    max_tokens = body.requested_max_tokens() or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise RequestError(400, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens}",
                           param="max_tokens")
    _check_context(engine, len(prompt), max_tokens)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, stop=body.stop_strings(), seed=body.seed,
                              ignore_eos=body.ignore_eos, presence_penalty=body.presence_penalty,
                              frequency_penalty=body.frequency_penalty, min_p=body.min_p,
                              logprobs=body.requested_logprobs())
    prefix = "chatcmpl" if chat else "cmpl"
    generation = GenerationRequest(f"{prefix}-{uuid.uuid4().hex}", prompt, sampling)
    shape = _ResponseShape(generation.request_id, engine.model_name, chat, len(prompt))
    events = engine.generate(generation)
    try:  # the first event comes before any byte is sent, so engine refusals are still HTTP errors
        first = await events.__anext__()
    except CapacityError as exc:
        await events.aclose()
        raise RequestError(400, str(exc), param="max_tokens") from None
    except (EngineUnavailable, RequestFailed) as exc:
        raise _engine_error(exc) from None
    stream = _Stream(first, events, timing, splitter)
    if body.stream:  # Starlette closes the stream (so the row is freed) when the client goes away
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(shape, stream, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    collecting = asyncio.ensure_future(_whole(stream))
    gone = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not collecting.done():  # the client went away: cancelling ends the request and frees its row
        collecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collecting
        raise RequestError(499, "the client closed the connection")
    try:
        reasoning, text, finish, logprobs = collecting.result()
    except (EngineUnavailable, RequestFailed) as exc:
        raise _engine_error(exc) from None
    return JSONResponse(shape.full(text, finish, stream.completion_tokens, reasoning if splitter else None,
                                   logprobs if sampling.logprobs is not None else None))


async def _whole(stream: "_Stream") -> tuple[str, str, str | None, list]:
    """A whole answer: (reasoning, content, finish reason, logprobs)."""
    reasoning, text, finish, logprobs = [], [], None, []
    async for part in stream:
        reasoning.append(part.reasoning)
        text.append(part.content)
        logprobs.extend(part.logprobs or ())
        finish = part.finish_reason or finish
    return "".join(reasoning), "".join(text), finish, logprobs


class _Part:
    __slots__ = ("reasoning", "content", "finish_reason", "logprobs")

    def __init__(self, reasoning: str, content: str, finish_reason: str | None, logprobs=None):
        self.reasoning, self.content, self.finish_reason = reasoning, content, finish_reason
        self.logprobs = logprobs


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
                    yield _Part("", event.text, event.finish_reason, event.logprobs)
                else:
                    reasoning, content = self.splitter.feed(event.text, event.token_ids)
                    if event.finish_reason:
                        held_reasoning, held_content = self.splitter.flush()
                        reasoning, content = reasoning + held_reasoning, content + held_content
                    yield _Part(reasoning, content, event.finish_reason, event.logprobs)
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
        self.text_offset = 0  # completions' logprobs: where the next token's text starts

    def envelope(self, choices: list, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.request_id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def full(self, text: str, finish: str | None, completion_tokens: int, reasoning: str | None,
             logprobs: list | None = None) -> dict:
        if self.chat:
            message = {"role": "assistant", "content": text}
            if reasoning is not None:
                message = {"role": "assistant", "reasoning_content": reasoning, "content": text or None}
            choice = {"index": 0, "message": message, "logprobs": self.logprobs(logprobs), "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": self.logprobs(logprobs), "finish_reason": finish}
        return self.envelope([choice], chunk=False) | {"usage": self.usage(completion_tokens)}

    def chunk(self, part: _Part | None, role: bool = False) -> dict:
        if not self.chat:
            return self.envelope([{"index": 0, "text": part.content, "logprobs": self.logprobs(part.logprobs),
                                   "finish_reason": part.finish_reason}], True)
        if role:
            return self.envelope([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None}], chunk=True)
        delta = {}
        if part.reasoning:
            delta["reasoning_content"] = part.reasoning
        if part.content:
            delta["content"] = part.content
        choice = {"index": 0, "delta": delta, "finish_reason": part.finish_reason}
        if part.logprobs:
            choice["logprobs"] = self.logprobs(part.logprobs)
        return self.envelope([choice], chunk=True)

    def logprobs(self, items: list | None) -> dict | None:
        """TokenLogprobs in OpenAI's shape: chat's `content` list, or completions' legacy columns."""
        if items is None:
            return None
        if self.chat:
            return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
                                 "top_logprobs": [{"token": a, "logprob": v, "bytes": list(a.encode())}
                                                  for a, v in t.top]} for t in items]}
        offsets = []
        for item in items:
            offsets.append(self.text_offset)
            self.text_offset += len(item.token)
        return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
                "top_logprobs": [dict(t.top) for t in items], "text_offset": offsets}


async def _sse(shape: _ResponseShape, stream: _Stream, include_usage: bool):
    def frame(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    if shape.chat:
        yield frame(shape.chunk(None, role=True))
    try:
        async for part in stream:
            if part.reasoning or part.content or part.finish_reason or part.logprobs:
                yield frame(shape.chunk(part))
    except (EngineUnavailable, RequestFailed) as exc:  # after the first byte: an error event ends it
        yield frame(error_body(str(exc), "server_error"))
        yield "data: [DONE]\n\n"
        return
    if include_usage:
        yield frame(shape.envelope([], chunk=True) | {"usage": shape.usage(stream.completion_tokens)})
    yield "data: [DONE]\n\n"
