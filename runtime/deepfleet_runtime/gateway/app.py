"""The gateway's pieces, wired: the public API app (an allowlist of routes), the admin app (unix
socket) and the metrics app (loopback), sharing keys, limits, replicas and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from ..schema import error_body
from .admin import create_admin_app
from .audit import AuditLog, Ed25519Signer
from .auth import KeyStore
from .budgets import Budgets
from .config import GatewayConfig
from .limits import AdmissionQueue, KeyLimiter
from .metrics import GatewayMetrics, Live
from .observability import add_observability_metrics
from .proxy import ApiEndpoint
from .sharedlimits import SharedLimiter
from .store import LimitsStore
from .upstreams import UpstreamPool

API_ROUTES = {"/v1/chat/completions": ["POST"], "/v1/completions": ["POST"], "/v1/models": ["GET"]}


class Gateway:
    """One gateway process's state and its three ASGI apps: `app`, `admin_app`, `metrics_app`."""

    def __init__(self, config: GatewayConfig, clock: Callable[[], float] = time.time):
        """`clock`: UTC epoch seconds, for budgets' windows and keys' expiry (tests move it)."""
        self.config = config
        self.connections = None  # the public server's ConnectionTable (gateway/connections.py), once built
        signer = Ed25519Signer(config.audit.checkpoint_key) if config.audit.checkpoint_key else None
        self.audit = AuditLog(config.audit, signer)
        self.pool = UpstreamPool(config)
        self.queue = AdmissionQueue(config.limits.max_in_flight, config.limits.max_queued,
                                    config.limits.queue_timeout_s)
        self.metrics = GatewayMetrics()
        self._add_live_metrics()
        add_observability_metrics(self.metrics, config, self.audit)
        self.store = LimitsStore(config.limits_store) if config.limits_store else None
        if self.store is None and config.state_dir is None:
            logging.getLogger(__name__).warning("no state_dir in the gateway config: budgets are counted in "
                                                "memory only and start again at 0 after a restart")
        self.budgets = Budgets.for_gateway(self.store, config.state_dir / "budgets" if config.state_dir else None,
                                           clock)
        self.limiter = SharedLimiter(self.store, config.limits) if self.store else KeyLimiter(config.limits)
        self.keys = KeyStore(config.api_keys_file)
        self._add_store_metrics()
        endpoint = ApiEndpoint(config, self.keys, self.limiter, self.queue, self.pool, self.audit, self.metrics,
                               self.budgets)
        self.metrics.add(Live("deepfleet_gateway_unauthenticated_throttled_total", "Requests without a valid key "
                              "refused with 429 (no audit record) over the per-address limit.", (),
                              lambda: {(): endpoint.addresses.throttled}, kind="counter"))
        routes = Starlette(
            routes=[Route("/health", self._health), Route("/ready", self._ready),
                    *(Route(path, endpoint, methods=methods) for path, methods in API_ROUTES.items())],
            exception_handlers={HTTPException: _http_error},
            lifespan=self._lifespan,
        )
        routes.router.redirect_slashes = False  # exactly the allowlisted paths; "/v1/models/" is 404
        self.app = _FastPath(endpoint, routes)
        self.admin_app = create_admin_app(self.pool, self.audit, config.audit.content, self.keys)
        self.metrics_app = Starlette(routes=[Route("/metrics", self._metrics)])

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette):
        await self.pool.start()
        if self.store:
            await self.store.start()
        try:
            yield
        finally:
            await self.pool.aclose()
            if self.store:
                await self.store.aclose()
            await asyncio.get_running_loop().run_in_executor(None, self.audit.close)
            self.budgets.close()

    async def _health(self, _: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def _ready(self, _: Request) -> JSONResponse:
        replicas = self.pool.replicas.values()
        serving = sum(1 for r in replicas if r.healthy and not r.draining)
        body = {"status": "ready" if serving else "not ready", "replicas_serving": serving,
                "replicas": len(replicas)}
        if self.store:  # an unreachable store does not make the gateway unready: it serves within its share
            body["limits"] = self.store.state()
        return JSONResponse(body, 200 if serving else 503)

    async def _metrics(self, _: Request) -> PlainTextResponse:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    def _add_store_metrics(self) -> None:
        if self.store is None:
            return
        store, limiter = self.store, self.limiter
        for name, help_text, read, kind in (
            ("limits_store_up", "1 while the shared limits store answers; 0: limits are local (1/gateways of "
             "each).", lambda: float(store.up), "gauge"),
            ("limits_store_failures_total", "Times the shared limits store stopped answering.",
             lambda: store.failures, "counter"),
            ("limits_local_admitted_total", "Requests admitted by this gateway's share of the limits while the "
             "store did not answer.", lambda: limiter.local_admitted, "counter"),
        ):
            self.metrics.add(Live(f"deepfleet_gateway_{name}", help_text, (), lambda read=read: {(): read()},
                                  kind=kind))

    def _add_live_metrics(self) -> None:
        replicas = self.pool.replicas.values
        for name, help_text, read in (
            ("in_flight", "Requests forwarded now.", lambda: {(): self.queue.in_flight}),
            ("queued", "Requests waiting for a slot.", lambda: {(): self.queue.queued}),
        ):
            self.metrics.add(Live(f"deepfleet_gateway_{name}", help_text, (), read))
        for name, help_text, field in (
            ("healthy", "1 if the replica passes health checks.", "healthy"),
            ("draining", "1 if the replica is drained.", "draining"),
            ("outstanding", "Requests in flight on the replica.", "outstanding"),
            ("served_total", "Requests the replica answered (below 500).", "served"),
            ("failed_total", "Attempts the replica answered with 5xx or lost.", "failed"),
            ("answer_seconds_total", "Time to the first byte of its answers, summed.", "answer_seconds"),
        ):
            self.metrics.add(Live(f"deepfleet_gateway_upstream_{name}", help_text, ("replica",),
                                  lambda field=field: {(r.name,): float(getattr(r, field)) for r in replicas()}))
        self.metrics.add(Live("deepfleet_gateway_upstream_retries_total", "Attempts on another replica.", (),
                              lambda: {(): self.pool.retries}, kind="counter"))
        self.metrics.add(Live("deepfleet_gateway_audit_records_total", "Request records written.", (),
                              lambda: {(): self.audit.records_written}, kind="counter"))
        self.metrics.add(Live("deepfleet_gateway_audit_fsyncs_total", "fdatasync calls (one per batch).", (),
                              lambda: {(): self.audit.fsyncs}, kind="counter"))
        self.metrics.add(Live("deepfleet_gateway_audit_writable", "0 while the audit log cannot be written "
                              "(requests are refused with 503).", (), lambda: {(): float(self.audit.writable)}))
        self.metrics.add(Live("deepfleet_gateway_audit_write_failures_total", "Audit batches that failed and "
                              "were cut back.", (), lambda: {(): self.audit.write_failures}, kind="counter"))
        table = lambda: self.connections  # noqa: E731 - set once the server is built
        for name, help_text, read, kind in (
            ("connections", "Client connections open (TLS handshakes included).", lambda t: t.total, "gauge"),
            ("connections_refused_total", "Connections closed at accept (per-address or total limit).",
             lambda t: t.refused, "counter"),
            ("connections_evicted_total", "Idle connections closed to make room for new ones.",
             lambda t: t.evicted, "counter"),
        ):
            self.metrics.add(Live(f"deepfleet_gateway_{name}", help_text, (),
                                  lambda read=read: {(): read(table())} if table() else {}, kind=kind))


class _FastPath:
    """API requests go straight to the endpoint (every streamed event passes through `send`, and
    Starlette's middleware wraps each one); the rest (health, 404, 405, lifespan) to Starlette."""

    def __init__(self, endpoint: ApiEndpoint, routes: Starlette):
        self.endpoint, self.routes = endpoint, routes

    async def __call__(self, scope, receive, send) -> None:
        methods = API_ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if methods is None:
            await self.routes(scope, receive, send)
        elif scope["method"] in methods:
            await self.endpoint(scope, receive, send)
        else:  # Starlette would answer HEAD on a GET route by running it: never forward that
            await _method_not_allowed(scope, send, methods)


async def _method_not_allowed(scope, send, methods: list[str]) -> None:
    allowed = ", ".join(methods)
    body = json.dumps(error_body(f"{scope['method']} is not allowed on {scope['path']}; use {allowed}",
                                 code="method_not_allowed")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"allow", allowed.encode())]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(error_body(exc.detail or "not found", code=str(exc.status_code)), exc.status_code)
