"""Per-key limits (token buckets for requests/min and tokens/min, concurrency) and the global queue.

A request reserves one request and its worst case of tokens (prompt estimate + max_tokens) up
front; when it completes, the reservation is settled against the real usage: unused tokens go
back to the bucket, extra ones are taken (the bucket may go negative, which delays the key's next
requests). Refusals say how long to wait: the HTTP layer turns that into 429 + Retry-After.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

from .auth import KeyRecord
from .config import LimitsSection


class TokenBucket:
    """`capacity` tokens, refilled continuously at capacity per minute; capacity 0 = unlimited."""

    def __init__(self, capacity: int, now: float):
        self.capacity = capacity
        self.level = float(capacity)
        self._stamp = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.capacity / 60.0)
        self._stamp = now

    def wait_for(self, amount: int, now: float) -> float:
        """Seconds until `amount` tokens are there (0 = now); math.inf if they never can be."""
        if self.capacity == 0:
            return 0.0
        if amount > self.capacity:
            return math.inf
        self._refill(now)
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity

    def take(self, amount: float, now: float) -> None:
        if self.capacity:
            self._refill(now)
            self.level -= amount

    def give_back(self, amount: float, now: float) -> None:
        if self.capacity:
            self._refill(now)
            self.level = min(self.capacity, self.level + amount)

    def resize(self, capacity: int, now: float) -> None:
        """Apply a changed limit; what was used (capacity - level) stays used."""
        if capacity != self.capacity:
            self._refill(now)
            used = self.capacity - self.level if self.capacity else 0.0
            self.capacity, self.level = capacity, capacity - used


@dataclass(frozen=True)
class Refusal:
    """Why a request may not run now, and how long to wait before retrying (None: never)."""

    reason: str
    retry_after_s: float | None


class Reservation:
    """A request's share of its key's limits; `settle` once, when the request is over."""

    def __init__(self, limiter: "_KeyState", tokens: int):
        self._limiter, self.tokens, self._settled = limiter, tokens, False

    def settle(self, used_tokens: int) -> None:
        """Return unused tokens (or take the extra ones) and free the concurrency slot."""
        if self._settled:
            return
        self._settled = True
        now = time.monotonic()
        self._limiter.tokens.give_back(self.tokens - used_tokens, now)
        self._limiter.active -= 1


class _KeyState:
    def __init__(self, rpm: int, tpm: int, now: float):
        self.requests = TokenBucket(rpm, now)
        self.tokens = TokenBucket(tpm, now)
        self.active = 0


def key_limits(key: KeyRecord, defaults: LimitsSection) -> tuple[int, int, int]:
    """(requests/min, tokens/min, concurrency) of `key`: its own, else the gateway's defaults; 0 = unlimited."""
    pick = lambda own, default: default if own is None else own  # noqa: E731
    return (pick(key.rpm, defaults.default_rpm), pick(key.tpm, defaults.default_tpm),
            pick(key.concurrency, defaults.default_concurrency))


def too_many_in_flight(active: int, concurrency: int) -> Refusal:
    return Refusal(f"this key already has {active} requests in flight (its limit is {concurrency}); wait for "
                   "one to finish", 1.0)


def too_large(tokens: int, tpm: int) -> Refusal:
    return Refusal(f"this request may use up to {tokens} tokens (prompt estimate + max_tokens), more than the "
                   f"key's limit of {tpm} tokens per minute; lower max_tokens or shorten the prompt", None)


def rate_limited(which: str, limit: int, wait_s: float) -> Refusal:
    return Refusal(f"rate limit of {limit} {which} per minute reached for this key", wait_s)


class KeyLimiter:
    """Token buckets and concurrency counts for every key, sized from the key or the defaults.

    With `fraction` < 1 (a fleet's gateway while the shared store is unreachable, sharedlimits.py)
    every limit is that share of the key's, at least 1, never unlimited; a request that fits the
    key's whole limit but not the share still runs once the share's bucket is full, and the bucket
    goes negative, so the rate over time stays within the share.
    """

    def __init__(self, defaults: LimitsSection, fraction: float = 1.0):
        self._defaults, self.fraction = defaults, fraction
        self._keys: dict[str, _KeyState] = {}

    def _share(self, limit: int) -> int:
        return limit if not limit or self.fraction >= 1 else max(1, int(limit * self.fraction))

    async def admit(self, key: KeyRecord, tokens: int) -> "Reservation | Refusal":
        """`reserve`, as the proxy awaits it (the shared limiter's answer comes from the store)."""
        return self.reserve(key, tokens)

    def reserve(self, key: KeyRecord, tokens: int) -> Reservation | Refusal:
        """Reserve one request and `tokens` tokens for `key`, or say why not."""
        now = time.monotonic()
        full_rpm, full_tpm, full_concurrency = key_limits(key, self._defaults)
        rpm, tpm, concurrency = self._share(full_rpm), self._share(full_tpm), self._share(full_concurrency)
        state = self._keys.get(key.key_id)
        if state is None:
            state = self._keys[key.key_id] = _KeyState(rpm, tpm, now)
        state.requests.resize(rpm, now)
        state.tokens.resize(tpm, now)
        if concurrency and state.active >= concurrency:
            return too_many_in_flight(state.active, concurrency)
        if full_tpm and tokens > full_tpm:
            return too_large(tokens, full_tpm)
        token_wait = state.tokens.wait_for(min(tokens, tpm) if tpm else tokens, now)
        request_wait = state.requests.wait_for(1, now)
        if request_wait or token_wait:
            which = "requests" if request_wait >= token_wait else "tokens"
            return rate_limited(which, rpm if which == "requests" else tpm, max(request_wait, token_wait))
        state.requests.take(1, now)
        state.tokens.take(tokens, now)
        state.active += 1
        return Reservation(state, tokens)


class QueueFull(Exception):
    """The gateway is at capacity: answer 503 at once (load shedding)."""


class AdmissionQueue:
    """At most `max_in_flight` requests run; up to `max_queued` wait (first come, first served)."""

    def __init__(self, max_in_flight: int, max_queued: int, timeout_s: float):
        self.max_in_flight, self.max_queued, self.timeout_s = max_in_flight, max_queued, timeout_s
        self.in_flight = 0
        self._waiting: deque[asyncio.Future] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; QueueFull when the line is full or too slow."""
        if self.in_flight < self.max_in_flight and not self._waiting:
            self.in_flight += 1
            return
        if len(self._waiting) >= self.max_queued:
            raise QueueFull(f"the gateway is at capacity ({self.in_flight} requests in flight, "
                            f"{len(self._waiting)} queued)")
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await asyncio.wait_for(turn, self.timeout_s)
        except asyncio.TimeoutError:
            raise QueueFull(f"no capacity within {self.timeout_s:.0f}s") from None
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            raise
        finally:
            if turn in self._waiting:
                self._waiting.remove(turn)

    def release(self) -> None:
        """Free a slot: hand it to the first one waiting, else count it free."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes over; in_flight stays the same
                return
        self.in_flight -= 1


class AddressLimiter:
    """Requests without a valid key, per client address: `per_minute` of them get their 401 (and
    an audit record); beyond that they get 429 without a record, counted in `throttled` and in
    the next record for that address (`throttled_before`). 0 = unlimited."""

    MAX_ADDRESSES = 65536  # beyond this many tracked addresses, the ones with a full bucket are forgotten

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._buckets: dict[str, TokenBucket] = {}
        self._suppressed: dict[str, int] = {}
        self.throttled = 0

    def admit(self, address: str) -> tuple[bool, float, int]:
        """(allowed, retry_after_s, refusals not recorded since this address's last record)."""
        if not self.per_minute:
            return True, 0.0, 0
        now = time.monotonic()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.MAX_ADDRESSES:
                self._forget_idle(now)
            bucket = self._buckets[address] = TokenBucket(self.per_minute, now)
        wait = bucket.wait_for(1, now)
        if wait:
            self.throttled += 1
            self._suppressed[address] = self._suppressed.get(address, 0) + 1
            return False, wait, 0
        bucket.take(1, now)
        return True, 0.0, self._suppressed.pop(address, 0)

    def _forget_idle(self, now: float) -> None:
        for address in [a for a, b in self._buckets.items() if b.wait_for(b.capacity, now) == 0]:
            del self._buckets[address]
            self._suppressed.pop(address, None)
