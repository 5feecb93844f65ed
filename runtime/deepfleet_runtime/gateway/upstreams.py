"""Runtime replicas behind the gateway: active health checks, least-outstanding-requests choice,
retries on another replica with exponential backoff and jitter, drain/undrain.

A request is retried (on a replica it has not tried yet) when the upstream could not be reached
or answered 5xx — always before the client got a byte. A replica that dropped the connection
after the request was sent may have been crashed by that very request: it is taken out of
service until a health check passes, and the request is tried on one other replica, never more,
so one poisonous request cannot take down the fleet. For a non-streamed request the whole
upstream answer is read before the client sees anything, so a replica dying mid-generation is
retried too; a stream that breaks after its first byte cannot be.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from dataclasses import dataclass, field

from .config import GatewayConfig, upstream_name
from .upstream_http import (HttpPool, UpstreamConnectError, UpstreamDisconnected, UpstreamError,
                            UpstreamProtocolError, UpstreamResponse, UpstreamTimeout)

log = logging.getLogger(__name__)

# Failures after which nothing reached the client and the request can go to another replica.
_RETRYABLE = (UpstreamConnectError, UpstreamDisconnected, UpstreamProtocolError)


class UpstreamUnavailable(Exception):
    """No replica could answer: 503, or 504 when one went silent; the message says what was tried."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(message)
        self.status = status


@dataclass
class Replica:
    name: str
    url: str
    http: HttpPool = field(repr=False)
    release: str = ""
    quantization: str = ""
    healthy: bool = False  # decided by the first health check, before the gateway takes traffic
    draining: bool = False  # no new requests; those in flight finish
    outstanding: int = 0
    failed_checks: int = 0
    good_checks: int = 0
    last_error: str = ""
    served: int = 0
    failed: int = 0  # attempts it answered with 5xx or lost (a rollout's bake gate compares replicas)
    answer_seconds: float = 0.0  # time to the first byte of the answers it served, summed

    def state(self) -> dict:
        """What the admin socket and metrics show."""
        return {"name": self.name, "url": self.url, "healthy": self.healthy, "draining": self.draining,
                "outstanding": self.outstanding, "served": self.served, "failed": self.failed,
                "answer_seconds": round(self.answer_seconds, 6), "release": self.release,
                "quantization": self.quantization, "last_error": self.last_error}


@dataclass
class Forwarded:
    """An upstream answer being relayed; `aclose` exactly once, when the relay is over."""

    replica: Replica
    response: UpstreamResponse
    attempts: int
    _open: bool = field(default=True, repr=False)

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self.replica.outstanding -= 1
            await self.response.aclose()


class UpstreamPool:
    """The replicas of gateway.yaml's `upstreams` and one HTTP client pool to reach them."""

    def __init__(self, config: GatewayConfig):
        self.routing = config.routing
        tls = None
        if config.upstream_tls:
            tls = ssl.create_default_context(cafile=str(config.upstream_tls.ca))
            tls.minimum_version = ssl.TLSVersion.TLSv1_3
            tls.load_cert_chain(str(config.upstream_tls.cert), str(config.upstream_tls.key))
        self.replicas = {}
        for upstream in config.upstreams:
            url = upstream.url.rstrip("/")
            http = HttpPool(url, tls, self.routing.connect_timeout_s, self.routing.read_timeout_s)
            name = upstream_name(upstream)
            self.replicas[name] = Replica(name, url, http, upstream.release, upstream.quantization)
        self.retries = 0  # attempts beyond the first, over the pool's life
        self._checker: asyncio.Task | None = None
        self._probe: asyncio.Future | None = None  # one round of checks shared by waiting requests

    def choose(self, exclude: set[str] = frozenset()) -> Replica | None:
        """The healthy, undrained replica with the fewest requests in flight (ties: at random)."""
        candidates = [r for r in self.replicas.values()
                      if r.healthy and not r.draining and r.name not in exclude]
        if not candidates:
            return None
        fewest = min(r.outstanding for r in candidates)
        return random.choice([r for r in candidates if r.outstanding == fewest])

    async def forward(self, method: str, path: str, headers: dict, body: bytes, buffered: bool) -> Forwarded:
        """Send the request to a replica, retrying elsewhere as the module docstring says.

        `buffered`: read the whole answer before returning (non-streamed requests).
        """
        tried: set[str] = set()
        errors: list[str] = []
        dropped = False  # a replica dropped the request once: one more try, no more
        for attempt in range(1, self.routing.max_attempts + 1):
            replica = self.choose(exclude=tried)
            if replica is None and attempt == 1:
                replica = await self._wait_for_replica()
            if replica is None:
                break
            if attempt > 1:
                self.retries += 1
                await asyncio.sleep(self._backoff(attempt - 1))
            tried.add(replica.name)
            started = asyncio.get_running_loop().time()
            try:
                forwarded = await self._attempt(replica, attempt, method, path, headers, body, buffered)
            except _RETRYABLE as exc:
                replica.failed += 1
                errors.append(f"{replica.name}: {exc}")
                if isinstance(exc, (UpstreamConnectError, UpstreamDisconnected)):
                    self._mark_down(replica, str(exc))
                if isinstance(exc, UpstreamDisconnected):
                    if dropped:
                        break
                    dropped = True
                continue
            except UpstreamTimeout as exc:
                replica.failed += 1
                raise UpstreamUnavailable(f"{replica.name}: {exc}", status=504) from None
            status = forwarded.response.status_code
            if status >= 500:
                replica.failed += 1
            if status >= 500 and attempt < self.routing.max_attempts and self.choose(exclude=tried):
                errors.append(f"{replica.name}: HTTP {status}")
                await forwarded.aclose()
                continue
            if status < 500:
                replica.served += 1
                replica.answer_seconds += asyncio.get_running_loop().time() - started
            return forwarded
        detail = "; ".join(errors) or "no healthy replica is in service"
        raise UpstreamUnavailable(f"no replica could answer ({detail})")

    async def _attempt(self, replica: Replica, attempt: int, method: str, path: str, headers: dict, body: bytes,
                       buffered: bool) -> Forwarded:
        """One try on `replica`; whatever fails, its count of requests in flight stays right."""
        replica.outstanding += 1
        response = None
        try:
            response = await replica.http.request(method, path, headers, body)
            if buffered:
                await response.read()
        except BaseException:
            replica.outstanding -= 1
            if response is not None:
                await response.aclose()
            raise
        return Forwarded(replica, response, attempt)

    async def _wait_for_replica(self) -> Replica | None:
        """No replica is in service (one restarting, or all drained): re-check the down ones every
        0.25 s for up to routing.wait_for_replica_s, so a short restart holds requests instead of
        failing them. Requests waiting together share one round of checks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.routing.wait_for_replica_s
        while loop.time() < deadline:
            if self._probe is None or self._probe.done():
                down = [r for r in self.replicas.values() if not r.healthy]
                self._probe = asyncio.ensure_future(asyncio.gather(*(self._check(r) for r in down)))
            await asyncio.shield(self._probe)
            replica = self.choose()
            if replica is not None:
                return replica
            await asyncio.sleep(0.25)
        return None

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with jitter before retry number `retry` (1, 2, ...)."""
        ceiling = min(self.routing.backoff_max_s, self.routing.backoff_base_s * 2 ** (retry - 1))
        return ceiling * random.uniform(0.5, 1.0)

    def _mark_down(self, replica: Replica, reason: str) -> None:
        if replica.healthy:
            log.warning("replica %s is down (%s); no traffic until a health check passes", replica.name, reason)
        replica.healthy, replica.good_checks, replica.last_error = False, 0, reason

    async def probe(self, replica: Replica, model: str, prompt: str, max_tokens: int) -> dict:
        """One greedy chat completion on `replica`, drained or not: a rolling update's smoke test of
        a replica before it takes traffic again. {"ok", "status", "content", "completion_tokens",
        "release"}, or {"ok": False, "error"}."""
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": max_tokens, "temperature": 0}).encode()
        try:
            response = await replica.http.request("POST", "/v1/chat/completions",
                                                  {"content-type": "application/json"}, body)
            try:
                raw = await response.read()
            finally:
                await response.aclose()
        except UpstreamError as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "release": replica.release}
        if response.status_code != 200:
            return {"ok": False, "status": response.status_code, "release": replica.release,
                    "error": f"HTTP {response.status_code}: {raw[:300].decode(errors='replace')}"}
        answer = json.loads(raw)
        tokens = (answer.get("usage") or {}).get("completion_tokens", 0)
        return {"ok": tokens > 0, "status": 200, "content": answer["choices"][0]["message"]["content"],
                "completion_tokens": tokens, "release": replica.release,
                **({} if tokens > 0 else {"error": "the completion held no tokens"})}

    # --- health checks -------------------------------------------------------------------------

    async def check_all(self) -> None:
        """One round of health checks on every replica, in parallel."""
        await asyncio.gather(*(self._check(r) for r in self.replicas.values()))

    async def _check(self, replica: Replica) -> None:
        try:
            response = await replica.http.request("GET", "/ready", {}, timeout_s=self.routing.health_timeout_s)
            try:
                body = await response.read()
            finally:
                await response.aclose()
            ok = response.status_code == 200
            reason = "" if ok else f"/ready answered HTTP {response.status_code}"
            info = json.loads(body) if ok else {}
            if not isinstance(info, dict):
                ok, reason, info = False, "/ready did not answer a JSON object", {}
        except (UpstreamError, ValueError) as exc:
            ok, reason, info = False, f"{type(exc).__name__}: {exc}", {}
        if ok:
            replica.failed_checks, replica.good_checks = 0, replica.good_checks + 1
            replica.release = str(info.get("release") or replica.release)
            replica.quantization = str(info.get("quantization") or replica.quantization)
            if not replica.healthy and replica.good_checks >= self.routing.healthy_after:
                replica.healthy, replica.last_error = True, ""
                log.info("replica %s is healthy", replica.name)
        else:
            replica.good_checks, replica.failed_checks = 0, replica.failed_checks + 1
            replica.last_error = reason
            if replica.healthy and replica.failed_checks >= self.routing.unhealthy_after:
                self._mark_down(replica, reason)

    async def start(self) -> None:
        """Decide every replica's health once, then keep checking in the background."""
        await self.check_all()
        for replica in self.replicas.values():  # the first round decides, whatever healthy_after says
            replica.healthy = replica.failed_checks == 0
        self._checker = asyncio.create_task(self._check_forever())

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.routing.health_interval_s)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - the checker must outlive any one bad round
                log.exception("health check round failed")

    async def aclose(self) -> None:
        if self._checker:
            self._checker.cancel()
        for replica in self.replicas.values():
            replica.http.close()
