"""The admin API on the gateway's unix socket: replica state, drain and undrain (docs/gateway.md).

    GET  /upstreams                       every replica's state
    GET  /upstreams/{name}                one replica's state
    POST /upstreams/{name}/drain[?wait_s=N]  no new requests; with wait_s, answer when none is in
                                          flight (or after N seconds: "idle": false)
    POST /upstreams/{name}/undrain        take requests again
    POST /upstreams/{name}/probe          one greedy completion on that replica, drained or not
                                          (body {"model", "prompt", "max_tokens"}): a smoke test,
                                          audited like any completion (record type "probe")
    GET  /keys                            the API key file in force: path, SHA-256, entries
    POST /keys/reload                     read the key file now, then the same (`deepfleet keys
                                          revoke` confirms each gateway reads what it pushed)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .audit import AuditError, AuditLog, utc_now_iso
from .auth import KeyStore
from .upstreams import UpstreamPool

log = logging.getLogger(__name__)


def create_admin_app(pool: UpstreamPool, audit: AuditLog, content: str = "full",
                     keys: KeyStore | None = None) -> Starlette:
    """The admin ASGI app for `pool` (served on a unix socket only: whoever can open it may drain);
    probes are written to `audit` with prompt and completion (`content` "full") or their SHA-256;
    `keys` is the API key file whose state /keys shows."""

    def replica_or_404(request: Request):
        replica = pool.replicas.get(request.path_params["name"])
        if replica is None:
            known = ", ".join(pool.replicas)
            return None, JSONResponse({"error": f"no upstream named {request.path_params['name']!r}; "
                                                f"known: {known}"}, 404)
        return replica, None

    async def upstreams(_: Request) -> JSONResponse:
        return JSONResponse({"upstreams": [r.state() for r in pool.replicas.values()]})

    async def upstream(request: Request) -> JSONResponse:
        replica, missing = replica_or_404(request)
        return missing or JSONResponse(replica.state())

    async def drain(request: Request) -> JSONResponse:
        replica, missing = replica_or_404(request)
        if missing:
            return missing
        try:
            wait_s = float(request.query_params.get("wait_s", "0"))
        except ValueError:
            return JSONResponse({"error": "wait_s must be a number of seconds"}, 400)
        if not replica.draining:
            log.info("draining replica %s (%d in flight)", replica.name, replica.outstanding)
        replica.draining = True
        deadline = time.monotonic() + wait_s
        while replica.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return JSONResponse(replica.state() | {"idle": replica.outstanding == 0})

    async def undrain(request: Request) -> JSONResponse:
        replica, missing = replica_or_404(request)
        if missing:
            return missing
        if replica.draining:
            log.info("undraining replica %s", replica.name)
        replica.draining = False
        return JSONResponse(replica.state())

    async def probe(request: Request) -> JSONResponse:
        replica, missing = replica_or_404(request)
        if missing:
            return missing
        try:
            body = json.loads(await request.body())
            model, prompt = str(body["model"]), str(body.get("prompt", "Hello"))
            max_tokens = int(body.get("max_tokens", 8))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'send {"model": NAME, "prompt": TEXT, "max_tokens": N}'}, 400)
        started = time.monotonic()
        result = await pool.probe(replica, model, prompt, max_tokens)
        try:
            await audit.append(_probe_record(replica.name, model, prompt, result, content, started))
        except AuditError as exc:
            log.error("probe of replica %s not audited: %s", replica.name, exc)
            return JSONResponse({"error": "the audit log cannot be written, so the probe's answer is "
                                          "withheld; see the gateway's log"}, 503)
        if not result["ok"]:
            log.warning("probe of replica %s failed: %s", replica.name, result.get("error"))
        return JSONResponse(result, 200 if result["ok"] else 502)

    async def key_file(request: Request) -> JSONResponse:
        if keys is None:
            return JSONResponse({"error": "this gateway has no key file"}, 404)
        return JSONResponse(keys.state(reload=request.method == "POST"))

    return Starlette(routes=[
        Route("/keys", key_file),
        Route("/keys/reload", key_file, methods=["POST"]),
        Route("/upstreams", upstreams),
        Route("/upstreams/{name}", upstream),
        Route("/upstreams/{name}/drain", drain, methods=["POST"]),
        Route("/upstreams/{name}/undrain", undrain, methods=["POST"]),
        Route("/upstreams/{name}/probe", probe, methods=["POST"]),
    ])


def _probe_record(replica: str, model: str, prompt: str, result: dict, content: str, started: float) -> dict:
    """The audit record of one probe: what was asked of which replica, and what came back."""
    messages = [{"role": "user", "content": prompt}]
    record = {"type": "probe", "time": utc_now_iso(), "request_id": uuid.uuid4().hex, "key_id": None,
              "client": "admin socket", "route": "admin probe", "model": model, "replica": replica,
              "release": result.get("release")}
    if content == "full":
        record["prompt"], record["completion"] = messages, result.get("content")
    else:
        record["prompt_sha256"] = _sha256_json(messages)
        record["completion_sha256"] = _sha256_json(result["content"]) if "content" in result else None
    record.update({"completion_tokens": result.get("completion_tokens"), "status": result.get("status"),
                   "error": result.get("error"), "latency_ms": round((time.monotonic() - started) * 1000, 1)})
    return record


def _sha256_json(value) -> str:
    """As the request records hash content: a string's UTF-8 bytes, else compact sorted JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True,
                                                            separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
