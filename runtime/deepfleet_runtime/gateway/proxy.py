"""The gateway's API endpoint (an ASGI app): key -> body checks -> limits -> queue -> durable
"started" record -> replica -> relay -> end record.

Order of refusals: 401 (key; 429 unrecorded beyond connections.max_unauthenticated_per_minute
from one address; `key_expired` past the key's expiry), 413/400 (body), 403 (model not allowed
for the key), 429 `insufficient_quota` + Retry-After to the window's end (the key's budget,
budgets.py), 429 + Retry-After (the key's rate limits: limits.py, or sharedlimits.py in a fleet),
503 + Retry-After (gateway at capacity, or no replica can answer). A request's real usage is
charged to the key's budget when it ends.

Audit: a request that is forwarded gets a durable "started" record (key, model, prompt, time)
before its first byte goes upstream, and its end record (status, completion, usage) on success,
failure, client disconnect (499) or shutdown. The end record is queued, not awaited: it shares the
next batch's fdatasync (durable within audit.DEFER_S), a crash before that leaves the request
"interrupted", and while the log cannot be written responses are withheld (503). A request refused
before its "started" record gets one record, with its body's SHA-256 and size only, durable before
the refusal is sent. A client that goes away cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

from ..schema import error_body
from .audit import AuditError, AuditLog, utc_now_iso
from .auth import KeyRecord, KeyStore, iso_utc
from .budgets import Budgets
from .config import GatewayConfig
from .limits import AddressLimiter, AdmissionQueue, QueueFull, Refusal
from .metrics import GatewayMetrics
from .payload import BadRequest, Inspected, inspect_body
from .records import end_record, start_record
from .upstream_http import UpstreamError
from .upstreams import Forwarded, UpstreamPool, UpstreamUnavailable

log = logging.getLogger(__name__)

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


AUDIT_DOWN = "the gateway cannot write its audit log at the moment"


class ClientGone(Exception):
    """The client disconnected before its request was read."""


@dataclass
class Exchange:
    """One request's facts, gathered on its way through; they become its audit record."""

    route: str
    client: str | None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    time: str = field(default_factory=utc_now_iso)
    key: KeyRecord | None = None
    inspected: Inspected | None = None
    forwarded: Forwarded | None = None
    status: int = 0
    error: str | None = None
    completion: list[str] = field(default_factory=list)
    usage: dict | None = None
    started_record: bool = False  # its "started" record is durable: the end record follows it
    recorded: bool = False
    body: bytes = b""  # as received; a refused request's record keeps only its hash and size
    throttled_before: int = 0  # requests from this address refused (429) without a record since its last one
    code: str | None = None  # why the gateway refused it (its error code), for the record and `keys usage`

    def used_tokens(self) -> int:
        """Tokens to charge the key: the upstream's usage, else an estimate of what was produced."""
        if self.usage:
            return int(self.usage.get("prompt_tokens", 0)) + int(self.usage.get("completion_tokens", 0))
        if self.inspected is None or not self.started_record:
            return 0  # refused before anything went upstream
        if self.forwarded is None:  # no replica answered (0), or the client left while one worked: worst case
            return self.inspected.prompt_estimate + self.inspected.max_tokens if self.status == 499 else 0
        return self.inspected.prompt_estimate + len(self.completion)


class ApiEndpoint:
    """The ASGI app behind /v1/chat/completions, /v1/completions and /v1/models."""

    def __init__(self, config: GatewayConfig, keys: KeyStore, limiter, queue: AdmissionQueue,
                 pool: UpstreamPool, audit: AuditLog, metrics: GatewayMetrics, budgets: Budgets):
        """`limiter`: limits.KeyLimiter (one gateway) or sharedlimits.SharedLimiter (a fleet's store)."""
        self.config, self.keys, self.limiter, self.queue, self.budgets = config, keys, limiter, queue, budgets
        self.pool, self.audit, self.metrics = pool, audit, metrics
        self.addresses = AddressLimiter(config.connections.max_unauthenticated_per_minute)

    async def __call__(self, scope, receive, send) -> None:
        client = scope.get("client")
        ex = Exchange(scope["path"], client[0] if client else None)
        try:
            await self._serve(ex, scope, receive, send)
        finally:
            key_id = ex.key.key_id if ex.key else ""
            self.metrics.requests.inc(ex.route, ex.status, key_id)
            self.metrics.latency.observe(time.monotonic() - ex.started, ex.route)
            if ex.usage:
                self.metrics.tokens.inc(key_id, "prompt", amount=ex.usage.get("prompt_tokens", 0))
                self.metrics.tokens.inc(key_id, "completion", amount=ex.usage.get("completion_tokens", 0))

    async def _serve(self, ex: Exchange, scope, receive, send) -> None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        ex.key = self.keys.identify(_bearer_token(headers.get("authorization", "")))
        if ex.key is None:  # before any body is read
            allowed, retry_after, ex.throttled_before = self.addresses.admit(ex.client or "")
            if not allowed:
                ex.status = 429
                return await _send_json(send, 429, error_body(
                    "too many requests without a valid API key from this address; pass a valid key as "
                    "'Authorization: Bearer <key>'", "rate_limit_error", code="rate_limit_exceeded"),
                    ex.request_id, [(b"retry-after", str(max(1, math.ceil(retry_after))).encode())])
            return await self._refuse(ex, send, 401, "Incorrect or missing API key. Pass it as "
                                      "'Authorization: Bearer <key>'.", code="invalid_api_key")
        if ex.key.expired(self.budgets.now()):
            return await self._refuse(ex, send, 401, f"this API key expired at {iso_utc(ex.key.expires)}; ask "
                                      "its owner for a new one", code="key_expired")
        body = b""
        if scope["method"] == "POST":
            try:
                body = await _read_body(receive, headers, self.config.limits.max_body_bytes)
                ex.body = body
                ex.inspected = inspect_body(body, ex.route == "/v1/chat/completions", self.config.limits)
            except ClientGone:
                ex.status, ex.error = 499, "the client closed the connection while sending"
                return await self._record(ex)
            except _TooLarge:
                return await self._refuse(ex, send, 413, f"the request body is larger than "
                                          f"{self.config.limits.max_body_bytes} bytes", code="request_too_large")
            except BadRequest as exc:
                return await self._refuse(ex, send, 400, exc.message, param=exc.param)
            allowed = ex.key.models
            if allowed is not None and ex.inspected.model not in allowed:
                return await self._refuse(ex, send, 403, f"this API key may not use model "
                                          f"'{ex.inspected.model}'; it may use: {', '.join(allowed) or 'none'}",
                                          param="model", code="model_not_allowed")
            exhausted = await self.budgets.check(ex.key)
            if exhausted is not None:
                return await self._refuse(ex, send, 429, exhausted.reason, code="insufficient_quota",
                                          type_="insufficient_quota", retry_after=exhausted.retry_after_s)
        tokens = ex.inspected.prompt_estimate + ex.inspected.max_tokens if ex.inspected else 0
        reservation = await self.limiter.admit(ex.key, tokens)
        if isinstance(reservation, Refusal):
            if reservation.retry_after_s is None:
                return await self._refuse(ex, send, 400, reservation.reason, param="max_tokens")
            return await self._refuse(ex, send, 429, reservation.reason, code="rate_limit_exceeded",
                                      type_="rate_limit_error", retry_after=reservation.retry_after_s)
        try:
            try:
                waited = time.monotonic()
                await self.queue.acquire()
                self.metrics.queue_wait.observe(time.monotonic() - waited)
            except QueueFull as exc:
                return await self._refuse(ex, send, 503, f"{exc}; retry with backoff", type_="server_error",
                                          code="overloaded", retry_after=1)
            try:
                await self._relay_watching_client(ex, scope["method"], body, receive, send)
            finally:
                self.queue.release()
        finally:
            used = ex.used_tokens()
            reservation.settle(used)
            if ex.started_record and (ex.forwarded is not None or ex.status == 499):  # a replica worked on it
                self.budgets.charge(ex.key, used)

    async def _relay_watching_client(self, ex: Exchange, method: str, body: bytes, receive, send) -> None:
        """Relay the exchange; if the client disconnects first, cancel it (and the upstream request)."""
        task, state = asyncio.current_task(), {"relaying": True, "gone": False}
        watch = asyncio.ensure_future(_cancel_on_disconnect(receive, task, state))
        try:
            await self._relay(ex, method, body, send)
        except asyncio.CancelledError:
            if not state["gone"]:  # the server's graceful shutdown ran out: record, then go
                if ex.started_record and not ex.recorded:
                    ex.status, ex.error = 503, "the gateway shut down during the request; the answer was cut off"
                    ex.recorded = True
                    with contextlib.suppress(AuditError):
                        self.audit.submit(self._audit_record(ex), wait=False)  # written before the log closes
                raise
            task.uncancel()
            if not ex.recorded:
                ex.status, ex.error = 499, "the client closed the connection; the upstream request was cancelled"
                await self._record(ex)
        finally:
            state["relaying"] = False
            watch.cancel()

    async def _relay(self, ex: Exchange, method: str, body: bytes, send) -> None:
        inspected = ex.inspected
        streaming = bool(inspected and inspected.stream)
        upstream_headers = {"content-type": "application/json", "x-request-id": ex.request_id}
        if inspected:
            ex.started_record = True  # from here on an end record follows it (a cancel included)
            try:
                await self.audit.append(self._start_record(ex))
            except AuditError as exc:
                ex.started_record, ex.recorded = False, True  # nothing can be recorded: nothing goes upstream
                ex.status, ex.error = 503, str(exc)
                log.error("request %s not forwarded: %s", ex.request_id, exc)
                return await _send_json(send, 503, error_body(f"{AUDIT_DOWN}; the request was not forwarded, "
                                                              "retry later", "server_error", code="audit_unavailable"),
                                        ex.request_id, [(b"retry-after", b"5")])
        try:
            ex.forwarded = await self.pool.forward(method, ex.route, upstream_headers,
                                                   inspected.upstream_body if inspected else body,
                                                   buffered=not streaming)
        except UpstreamUnavailable as exc:
            what = "did not answer in time" if exc.status == 504 else "is unavailable"
            return await self._refuse(ex, send, exc.status, f"the model service {what}; retry with backoff",
                                      type_="server_error", code="upstream_unavailable", detail=str(exc),
                                      retry_after=max(1, math.ceil(self.config.routing.health_interval_s)))
        try:
            response = ex.forwarded.response
            if streaming and response.status_code == 200:
                await self._relay_stream(ex, send)
            else:
                await self._relay_whole(ex, send)
        finally:
            await ex.forwarded.aclose()

    async def _relay_whole(self, ex: Exchange, send) -> None:
        response = ex.forwarded.response
        try:
            content = await response.read()
        except UpstreamError as exc:  # a streamed request's error answer broke off
            return await self._refuse(ex, send, 502, "the model service broke off its answer; retry with backoff",
                                      type_="server_error", detail=str(exc))
        ex.status = response.status_code
        if ex.status == 200 and ex.route == "/v1/models" and ex.key.models is not None:
            content = _only_models(content, ex.key.models)
        if ex.status == 200 and ex.inspected:
            _read_completion(ex, content)
        elif ex.status >= 400:
            ex.error = _upstream_error_message(content)
        try:
            await self._record(ex)
        except AuditError as exc:
            log.error("response %s withheld: %s", ex.request_id, exc)
            return await _send_json(send, 503, error_body(f"{AUDIT_DOWN}; the response was withheld",
                                                          "server_error"), ex.request_id)
        headers = [(b"content-type", response.headers.get("content-type", "application/json").encode()),
                   (b"content-length", str(len(content)).encode()), (b"x-request-id", ex.request_id.encode())]
        await send({"type": "http.response.start", "status": ex.status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _relay_stream(self, ex: Exchange, send) -> None:
        """Pass SSE events on as they come; hold back `[DONE]` until the end record is queued."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_SSE_HEADERS, (b"x-request-id", ex.request_id.encode())]})
        events, done = _SseSplitter(), None
        try:
            async for chunk in ex.forwarded.response.iter_raw():
                out = []
                for event, data in events.feed(chunk):
                    if data == "[DONE]":
                        done = event
                    elif _stream_event(ex, data):
                        out.append(event)
                if out:
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        except UpstreamError as exc:
            ex.error = f"the upstream stream broke: {exc}"
        ex.status = 200 if done else 502
        if not done and not ex.error:
            ex.error = "the upstream stream ended without [DONE]"
        told = "the model service broke off the stream; retry with backoff"
        try:
            await self._record(ex)
        except AuditError as exc:
            log.error("end of stream %s withheld: %s", ex.request_id, exc)
            done, told = None, f"{AUDIT_DOWN}; the end of the response was withheld"
        if done is None:
            failure = json.dumps(error_body(told, "server_error"))
            await send({"type": "http.response.body", "body": f"data: {failure}\n\n".encode(), "more_body": False})
        else:
            await send({"type": "http.response.body", "body": done, "more_body": False})

    async def _refuse(self, ex: Exchange, send, status: int, message: str, param: str | None = None,
                      code: str | None = None, type_: str = "invalid_request_error",
                      retry_after: float | None = None, detail: str | None = None) -> None:
        """Answer `message` (what the client may know); the record gets `detail` too (addresses, errors)."""
        ex.status, ex.error, ex.code = status, f"{message} ({detail})" if detail else message, code
        try:
            await self._record(ex)
        except AuditError as exc:
            log.error("request %s refused: %s", ex.request_id, exc)
            status, message, retry_after, type_ = 503, AUDIT_DOWN, 1, "server_error"
        extra = [(b"retry-after", str(max(1, math.ceil(retry_after))).encode())] if retry_after else []
        await _send_json(send, status, error_body(message, type_, param, code), ex.request_id, extra)

    async def _record(self, ex: Exchange) -> None:
        """Write the exchange's audit record: wait until it is durable, unless its "started" record
        already is (then queue it for the next batch; AuditError while the log cannot be written)."""
        ex.recorded = True
        if not ex.started_record:
            return await self.audit.append(self._audit_record(ex))
        if not self.audit.writable:  # queued (and kept until written), but the log fails now: fail closed
            self.audit.submit(self._audit_record(ex), wait=False)
            raise AuditError("the audit log cannot be written at the moment")
        asyncio.get_running_loop().call_soon(self._queue_end, ex)  # built after the response went out

    def _queue_end(self, ex: Exchange) -> None:
        try:
            self.audit.submit(self._audit_record(ex), wait=False)
        except AuditError as exc:  # closed: only after the server stopped, so not expected
            log.error("end record of %s not written: %s; it verifies as interrupted", ex.request_id, exc)

    def _content_policy(self, ex: Exchange) -> str:
        return (ex.key.audit_content if ex.key else None) or self.config.audit.content

    def _start_record(self, ex: Exchange) -> dict:
        return start_record(ex, self._content_policy(ex))

    def _audit_record(self, ex: Exchange) -> dict:
        return end_record(ex, self._content_policy(ex))


class _TooLarge(Exception):
    pass


async def _read_body(receive, headers: dict, limit: int) -> bytes:
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge()
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _cancel_on_disconnect(receive, task: asyncio.Task, state: dict) -> None:
    """Cancel `task` if the client disconnects while it still relays."""
    while (await receive())["type"] != "http.disconnect":
        pass
    if state["relaying"]:
        state["gone"] = True
        task.cancel()


async def _send_json(send, status: int, payload: dict, request_id: str, extra_headers=()) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _bearer_token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _read_completion(ex: Exchange, content: bytes) -> None:
    try:
        payload = json.loads(content)
        ex.usage = payload.get("usage")
        choice = payload["choices"][0]
        ex.completion.append(choice["message"]["content"] if "message" in choice else choice["text"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        ex.error = "the upstream answer did not have the expected shape"


def _stream_event(ex: Exchange, data: str) -> bool:
    """Take usage and text from one stream event; False if the client must not see it."""
    try:
        payload = json.loads(data)
    except ValueError:
        return True
    if not isinstance(payload, dict):
        return True
    choices = payload.get("choices")
    if payload.get("usage") and not choices:
        ex.usage = payload["usage"]
        return ex.inspected.include_usage
    for choice in choices or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text") if isinstance(choice, dict) else None
        if isinstance(text, str) and text:
            ex.completion.append(text)
    return True


def _only_models(content: bytes, allowed) -> bytes:
    """The upstream's model list, less the models the key may not use."""
    try:
        listing = json.loads(content)
        listing["data"] = [m for m in listing["data"] if isinstance(m, dict) and m.get("id") in allowed]
    except (ValueError, KeyError, TypeError):
        return json.dumps({"object": "list", "data": []}).encode()
    return json.dumps(listing).encode()


def _upstream_error_message(content: bytes) -> str:
    try:
        return str(json.loads(content)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return content[:200].decode("utf-8", "replace")


class _SseSplitter:
    """Splits a byte stream into whole server-sent events: yields (event bytes, data text)."""

    def __init__(self):
        self._pending = b""

    def feed(self, chunk: bytes):
        self._pending += chunk
        while True:
            end = self._pending.find(b"\n\n")
            if end < 0:
                return
            event, self._pending = self._pending[:end + 2], self._pending[end + 2:]
            if event.startswith(b"data: ") and event.count(b"\n") == 2:  # what the runtime sends
                yield event, event[6:-2].decode("utf-8", "replace")
                continue
            data = "\n".join(line[5:].lstrip(" ") for line in event.decode("utf-8", "replace").splitlines()
                             if line.startswith("data:"))
            yield event, data
