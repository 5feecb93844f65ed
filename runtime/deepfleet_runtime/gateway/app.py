"""The gateway's ASGI app: an allowlist of routes, API-key auth, streaming pass-through upstream."""

from __future__ import annotations

import contextlib
import logging
import uuid

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ..schema import error_body
from .auth import KeyStore
from .config import GatewayConfig

log = logging.getLogger(__name__)

# Response headers that belong to one hop and must not be copied from upstream.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


def create_gateway_app(config: GatewayConfig) -> Starlette:
    """Build the gateway app for `config`; the upstream client lives as long as the app."""
    keys = KeyStore(config.api_keys_file)
    timeout = httpx.Timeout(config.upstream.read_timeout_s, connect=config.upstream.connect_timeout_s)
    client = httpx.AsyncClient(base_url=config.upstream.url, timeout=timeout,
                               limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> JSONResponse:
        try:
            upstream = await client.get("/ready", timeout=5.0)
        except httpx.HTTPError as exc:
            return JSONResponse({"status": "not ready", "detail": f"upstream unreachable: {exc}"}, 503)
        return JSONResponse(upstream.json(), upstream.status_code)

    async def forward(request: Request):
        key_id = keys.identify(_bearer_token(request))
        if key_id is None:
            return JSONResponse(error_body("Incorrect or missing API key. Pass it as "
                                           "'Authorization: Bearer <key>'.", code="invalid_api_key"), 401)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        headers = {"content-type": request.headers.get("content-type", "application/json"),
                   "x-request-id": request_id}
        upstream_request = client.build_request(request.method, request.url.path, headers=headers,
                                                content=await request.body())
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("upstream failed for %s: %s", request_id, exc)
            return JSONResponse(error_body("the model server is unavailable; retry with backoff",
                                           type_="server_error"), 503, headers={"Retry-After": "1"})
        response_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
        response_headers["x-request-id"] = request_id
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                                 headers=response_headers, background=BackgroundTask(upstream.aclose))

    async def not_found(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.detail or "not found", code=str(exc.status_code)), exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/v1/models", forward),
            Route("/v1/chat/completions", forward, methods=["POST"]),
            Route("/v1/completions", forward, methods=["POST"]),
        ],
        exception_handlers={HTTPException: not_found},
        lifespan=lifespan,
    )


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
