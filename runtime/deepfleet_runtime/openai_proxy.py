"""Forwarding OpenAI requests to an engine that is itself an OpenAI server (vLLM), unchanged.

The body goes to the child as the client sent it, with what the runtime owns:
- the model name must be the served one;
- max_tokens (max_completion_tokens) is capped by runtime.yaml's limits, the default when absent;
- the prompt, counted by the child's own tokenizer (its /tokenize, chat template and tools
  included), must fit limits.max_prompt_tokens and, with max_tokens, the model's context: else 400
  context_length_exceeded (vLLM itself would silently shorten the answer to fit);
- a text prompt of a model whose tokenizer asks for BOS (DeepSeek's add_bos_token) gets it: with
  transformers 5 the tokenizer no longer adds it, so vLLM would not (chat templates add their own).
Everything else (chat template, n, logprobs, penalties, stop, seed, response_format, tools) is the
child's, and so is the answer: status, body and SSE stream come back unchanged, except that chat
answers also carry vLLM's `reasoning` as `reasoning_content` (DeepSeek's name, and our other
engines'). Failures: vLLM's 4xx pass through; the child unreachable or dying is 503 (retry; the
supervisor restarts it), and a stream that has already started ends with an error event and
[DONE], never a hang or a silent cut.
"""

from __future__ import annotations

import json
import re
import time

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .config import LimitsSection
from .metrics import RuntimeMetrics
from .schema import error_body

CONTEXT_MESSAGE = re.compile(r"maximum context length|max_model_len|context length|too long", re.I)
ENGINE_LOST = "the inference engine stopped while answering (it is being restarted); retry the request"
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "date", "server"}


class ProxyError(Exception):
    """An answer the runtime gives itself (not the child's)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.response = JSONResponse(error_body(message, type_, param, code), status)


class OpenAIProxy:
    """Forwards /v1/chat/completions and /v1/completions to `engine.openai_base_url`."""

    def __init__(self, engine, limits: LimitsSection, metrics: RuntimeMetrics):
        self.engine, self.limits, self.metrics = engine, limits, metrics
        self._client: httpx.AsyncClient | None = None

    async def forward(self, request: Request, route: str) -> Response:
        arrived = time.monotonic()
        try:
            payload = self._checked(await request.body(), chat=route == "chat")
            await self._check_context(route, payload)
            response = await self._send(route, payload)
        except ProxyError as exc:
            self.metrics.requests.labels(route, str(exc.response.status_code)).inc()
            return exc.response
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        if response.status_code != 200:
            return await self._error(response)
        rename = route == "chat" and self.engine.config.reasoning_parser != "none"
        if payload.get("stream"):
            headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
            relay = self._relay_events(response, arrived) if rename else self._relay(response, arrived)
            return StreamingResponse(relay, response.status_code, headers)
        return await self._whole(response, rename)

    def _checked(self, raw: bytes, chat: bool) -> dict:
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProxyError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ProxyError(400, "request body must be a JSON object")
        if payload.get("model") != self.engine.model_name:
            raise ProxyError(404, f"model '{payload.get('model')}' does not exist; this server serves "
                             f"'{self.engine.model_name}'", param="model", code="model_not_found")
        if not self.engine.ready:
            raise ProxyError(503, "the model is not ready (loading or restarting); retry shortly",
                             type_="server_error")
        field = "max_completion_tokens" if chat and payload.get("max_completion_tokens") is not None else "max_tokens"
        requested = payload.get(field)
        if requested is None:
            payload["max_tokens"] = self.limits.default_max_tokens
        elif isinstance(requested, int) and requested > self.limits.max_tokens:
            raise ProxyError(400, f"{field} {requested} exceeds the limit of {self.limits.max_tokens}; "
                             "ask for fewer", param=field)
        bos = self.engine.bos_text
        if not chat and bos and payload.get("add_special_tokens", True):
            prompt = payload.get("prompt")
            if isinstance(prompt, str):
                payload["prompt"] = _with_bos(prompt, bos)
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                payload["prompt"] = [_with_bos(p, bos) for p in prompt]
        return payload

    async def _check_context(self, route: str, payload: dict) -> None:
        """400 context_length_exceeded when the prompt is over the limit or, with max_tokens, over
        the model's context (counted by the child; when it cannot count, vLLM's checks answer)."""
        counted = [await self._count(route, body) for body in _tokenize_bodies(route, payload)]
        counted = [c for c in counted if c is not None]
        if not counted:
            return
        tokens, context = max(c[0] for c in counted), counted[0][1]
        param = "messages" if route == "chat" else "prompt"
        if tokens > self.limits.max_prompt_tokens:
            raise ProxyError(400, f"the prompt has {tokens} tokens; the limit is {self.limits.max_prompt_tokens}",
                             param=param, code="context_length_exceeded")
        wanted = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if isinstance(wanted, int) and tokens + wanted > context:
            raise ProxyError(400, f"the prompt has {tokens} tokens and max_tokens is {wanted}: together "
                             f"{tokens + wanted}, beyond the model's context length of {context} tokens; "
                             f"shorten the prompt or ask for at most {max(context - tokens, 0)} tokens",
                             param=param, code="context_length_exceeded")

    async def _count(self, route: str, body: dict) -> tuple[int, int] | None:
        if "ids" in body:
            return len(body["ids"]), await self._context()
        try:
            response = await self._http().post("/tokenize", json={"model": self.engine.model_name, **body})
        except httpx.HTTPError:
            raise ProxyError(503, ENGINE_LOST, type_="server_error") from None
        if response.status_code != 200:
            return None
        answer = response.json()
        return answer["count"], answer["max_model_len"]

    async def _context(self) -> int:
        answer = await self._count("completions", {"prompt": ""})
        return answer[1] if answer else 1 << 62

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # no read timeout: a hung child is caught by the liveness probe
            self._client = httpx.AsyncClient(base_url=self.engine.openai_base_url,
                                             timeout=httpx.Timeout(None, connect=5.0))
        return self._client

    async def _send(self, route: str, payload: dict) -> httpx.Response:
        client = self._http()
        path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
        self.engine.in_flight += 1
        try:
            return await client.send(client.build_request("POST", path, json=payload), stream=True)
        except httpx.HTTPError:
            self.engine.in_flight -= 1
            raise ProxyError(503, ENGINE_LOST, type_="server_error") from None

    async def _error(self, response: httpx.Response) -> Response:
        try:
            body = await response.aread()
        except httpx.HTTPError:
            body = b""
        finally:
            await self._done(response)
        status = response.status_code
        try:
            error = json.loads(body)
            detail = error.get("error", error) if isinstance(error, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            error, detail = None, {}
        message = str(detail.get("message") or body.decode(errors="replace")[:500] or f"HTTP {status}")
        if status == 400 and CONTEXT_MESSAGE.search(message):
            return JSONResponse(error_body(message, "invalid_request_error", detail.get("param") or "messages",
                                           "context_length_exceeded"), 400)
        if 400 <= status < 500 and isinstance(error, dict):
            return Response(body, status, media_type="application/json")  # vLLM's own client error
        return JSONResponse(error_body(message, "server_error" if status >= 500 else "invalid_request_error",
                                       detail.get("param"), detail.get("code")), status)

    async def _whole(self, response: httpx.Response, rename: bool) -> Response:
        try:
            body = await response.aread()
        except httpx.HTTPError:
            return JSONResponse(error_body(ENGINE_LOST, "server_error"), 503)
        finally:
            await self._done(response)
        self._count_usage(body)
        if rename:
            answer = json.loads(body)
            for choice in answer.get("choices") or []:
                _add_reasoning_content(choice.get("message"))
            body = json.dumps(answer, ensure_ascii=False).encode()
        return Response(body, 200, media_type="application/json")

    async def _relay_events(self, response: httpx.Response, arrived: float):
        """A chat stream event by event, each delta's `reasoning` also as `reasoning_content`."""
        async for chunk in self._relay(response, arrived, lines=True):
            if chunk.startswith("data: {"):
                event = json.loads(chunk[len("data: "):])
                for choice in event.get("choices") or []:
                    _add_reasoning_content(choice.get("delta"))
                chunk = "data: " + json.dumps(event, ensure_ascii=False)
            yield (chunk + "\n\n").encode() if chunk else b""

    async def _relay(self, response: httpx.Response, arrived: float, lines: bool = False):
        first = True
        try:
            async for chunk in (response.aiter_lines() if lines else response.aiter_raw()):
                if first:
                    self.metrics.time_to_first_token.observe(time.monotonic() - arrived)
                    first = False
                yield chunk
        except httpx.HTTPError:
            event = f"\n\ndata: {json.dumps(error_body(ENGINE_LOST, 'server_error', code='engine_restarting'))}"
            yield event if lines else f"{event}\n\ndata: [DONE]\n\n".encode()
            if lines:
                yield "data: [DONE]"
        finally:
            await self._done(response)

    async def _done(self, response: httpx.Response) -> None:
        self.engine.in_flight -= 1
        await response.aclose()

    def _count_usage(self, body: bytes) -> None:
        try:
            usage = json.loads(body).get("usage") or {}
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            return
        self.metrics.prompt_tokens.inc(usage.get("prompt_tokens") or 0)
        self.metrics.generation_tokens.inc(usage.get("completion_tokens") or 0)


def _with_bos(prompt: str, bos: str) -> str:
    return prompt if prompt.startswith(bos) else bos + prompt


def _add_reasoning_content(message: dict | None) -> None:
    if isinstance(message, dict) and "reasoning" in message and "reasoning_content" not in message:
        message["reasoning_content"] = message["reasoning"]


def _tokenize_bodies(route: str, payload: dict) -> list[dict]:
    """What to count: /tokenize bodies for the prompt(s), or {"ids": [...]} for token-id prompts."""
    if route == "chat":
        keys = ("messages", "tools", "chat_template_kwargs", "add_generation_prompt", "continue_final_message")
        return [{key: payload[key] for key in keys if payload.get(key) is not None}]
    prompt = payload.get("prompt")
    prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    bodies = []
    for one in prompts:
        if isinstance(one, str):
            bodies.append({"prompt": one, "add_special_tokens": payload.get("add_special_tokens", True)})
        elif isinstance(one, list) and all(isinstance(i, int) for i in one):
            bodies.append({"ids": one})
    return bodies
