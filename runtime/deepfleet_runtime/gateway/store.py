"""The store a fleet's gateways share their limits and budgets in (Valkey or Redis, from the OS's
packages: roles/limits_store.py), and whether it answers.

Every use goes through `call`: a store that fails (unreachable, slower than timeout_s, a refused
password) is marked down at once and the caller falls back on what this gateway knows by itself
(sharedlimits.py: 1/gateways of every limit; usagestore.py: counts kept here until the store is
back). While it is down no request waits for it: one probe every retry_s asks it again, and when
it answers, the gateway uses it again (after handing over what it counted meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .config import LimitsStoreSection

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 64  # to the store, per gateway process


class StoreDown(Exception):
    """The store did not answer; the caller uses its local fallback."""


class LimitsStore:
    """One client for the shared store, its health, and the background work that goes with it."""

    def __init__(self, section: LimitsStoreSection):
        self.section = section
        password = section.password_file.read_text().strip() if section.password_file else None
        options = {"password": password or None, "socket_timeout": section.timeout_s,
                   "socket_connect_timeout": section.timeout_s, "retry": Retry(NoBackoff(), 0),
                   "health_check_interval": 0}
        if section.url.startswith("rediss://"):
            options.update(ssl_ca_certs=str(section.ca) if section.ca else None,
                           ssl_min_version=ssl.TLSVersion.TLSv1_3)
        # More uses at once than connections wait their turn (`_turns`): a busy gateway is not a dead
        # store; timeout_s counts only once a command is on its way. Two more for probes.
        pool = aioredis.BlockingConnectionPool.from_url(section.url, max_connections=MAX_CONNECTIONS + 2,
                                                        timeout=section.timeout_s, **options)
        self._turns = asyncio.Semaphore(MAX_CONNECTIONS)
        self.client = aioredis.Redis.from_pool(pool)  # closes the pool with the client
        self.up = True  # until a call fails (start() asks once)
        self.error: str | None = None
        self.down_since: float | None = None
        self.failures = 0  # times the store went from answering to not
        self._probe: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._on_recovery: list[Callable[[], Awaitable[None]]] = []

    @property
    def local_fraction(self) -> float:
        """The share of each limit this gateway admits by itself while the store is down."""
        return 1.0 / self.section.gateways

    def key(self, *parts: str) -> str:
        """A key of the store, under the configured prefix."""
        return self.section.prefix + ":".join(parts)

    def on_recovery(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` each time the store answers again (before requests use it)."""
        self._on_recovery.append(callback)

    async def call(self, use: Callable[[aioredis.Redis], Awaitable]):
        """`await use(client)`; StoreDown (and the store marked down) when the store fails."""
        if not self.up:
            raise StoreDown(self.error)
        async with self._turns:
            if not self.up:  # it went down while this one waited
                raise StoreDown(self.error)
            try:
                return await use(self.client)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self.mark_down(exc)
                raise StoreDown(self.error) from None

    def mark_down(self, exc: BaseException) -> None:
        """Stop using the store and start probing it."""
        self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self.up:
            return
        self.up, self.down_since = False, time.monotonic()
        self.failures += 1
        log.warning("the limits store %s does not answer (%s); serving within 1/%d of each limit until it does",
                    self._where(), self.error, self.section.gateways)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_until_up())

    def spawn(self, work: Awaitable) -> None:
        """Run `work` in the background (store writes that no response waits for); awaited at close."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Ask the store once, so /ready says at once whether it answers."""
        try:
            await self.call(lambda client: client.ping())
        except StoreDown:
            pass

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.section.timeout_s * 4)
        await self.client.aclose()

    def state(self) -> dict:
        """What /ready shows about the store."""
        if self.up:
            return {"store": "ok", "url": self._where()}
        return {"store": "unreachable", "url": self._where(), "error": self.error,
                "down_s": round(time.monotonic() - (self.down_since or time.monotonic()), 1),
                "local_fraction": round(self.local_fraction, 4)}

    def _where(self) -> str:
        return self.section.url.split("@")[-1]

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self.section.retry_s)
            try:
                await self.client.ping()
                for callback in self._on_recovery:
                    await callback()
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            down_for = time.monotonic() - (self.down_since or time.monotonic())
            self.up, self.error, self.down_since = True, None, None
            log.warning("the limits store %s answers again after %.1f s; limits are shared again", self._where(),
                        down_for)
            return
