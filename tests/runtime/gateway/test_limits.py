"""Per-key token buckets, concurrency and the global queue: in isolation, then through a real gateway."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from deepfleet_runtime.gateway import limits
from deepfleet_runtime.gateway.auth import KeyRecord
from deepfleet_runtime.gateway.config import LimitsSection
from deepfleet_runtime.gateway.limits import AdmissionQueue, KeyLimiter, QueueFull, Refusal, Reservation, TokenBucket


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(limits.time, "monotonic", fake)
    return fake


def test_bucket_refills_at_capacity_per_minute():
    bucket = TokenBucket(60, now=0.0)
    bucket.take(60, now=0.0)
    assert bucket.wait_for(1, now=0.0) == pytest.approx(1.0)
    assert bucket.wait_for(1, now=1.0) == 0
    assert bucket.wait_for(61, now=1.0) == math.inf
    assert TokenBucket(0, now=0.0).wait_for(10**9, now=0.0) == 0  # 0 = unlimited


def test_rpm_refuses_with_the_wait_then_admits(clock):
    limiter = KeyLimiter(LimitsSection())
    key = KeyRecord("k", "x", rpm=2, tpm=0, concurrency=0)
    first, second = limiter.reserve(key, 10), limiter.reserve(key, 10)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    refusal = limiter.reserve(key, 10)
    assert isinstance(refusal, Refusal) and "2 requests per minute" in refusal.reason
    assert refusal.retry_after_s == pytest.approx(30.0)
    clock.now += 30
    assert isinstance(limiter.reserve(key, 10), Reservation)


def test_tokens_are_reserved_then_unused_ones_refunded(clock):
    limiter = KeyLimiter(LimitsSection())
    key = KeyRecord("k", "x", rpm=0, tpm=100, concurrency=0)
    reservation = limiter.reserve(key, 80)
    assert isinstance(limiter.reserve(key, 30), Refusal)  # 80 of 100 reserved
    reservation.settle(used_tokens=20)  # 60 come back
    assert isinstance(limiter.reserve(key, 70), Reservation)


def test_usage_beyond_the_reservation_is_charged(clock):
    limiter = KeyLimiter(LimitsSection())
    key = KeyRecord("k", "x", rpm=0, tpm=100, concurrency=0)
    limiter.reserve(key, 10).settle(used_tokens=110)  # the bucket goes 10 into debt
    refusal = limiter.reserve(key, 10)
    assert refusal.retry_after_s == pytest.approx(12.0)  # 20 tokens at 100/min


def test_a_request_larger_than_the_tpm_can_never_run(clock):
    refusal = KeyLimiter(LimitsSection()).reserve(KeyRecord("k", "x", tpm=50), 51)
    assert isinstance(refusal, Refusal) and refusal.retry_after_s is None and "lower max_tokens" in refusal.reason


def test_concurrency_limit_and_defaults(clock):
    limiter = KeyLimiter(LimitsSection(default_concurrency=1, default_rpm=0, default_tpm=0))
    key = KeyRecord("k", "x")
    held = limiter.reserve(key, 1)
    refusal = limiter.reserve(key, 1)
    assert isinstance(refusal, Refusal) and refusal.retry_after_s == 1.0 and "in flight" in refusal.reason
    held.settle(1)
    held.settle(1)  # settling twice frees one slot only
    assert isinstance(limiter.reserve(key, 1), Reservation)
    assert isinstance(limiter.reserve(key, 1), Refusal)


def test_changed_limits_apply_to_the_existing_bucket(clock):
    limiter = KeyLimiter(LimitsSection())
    limiter.reserve(KeyRecord("k", "x", rpm=10, tpm=0, concurrency=0), 1)
    assert isinstance(limiter.reserve(KeyRecord("k", "x", rpm=1, tpm=0, concurrency=0), 1), Refusal)


def test_queue_admits_in_order_and_sheds_when_full():
    async def scenario():
        queue = AdmissionQueue(max_in_flight=1, max_queued=1, timeout_s=5)
        await queue.acquire()
        waiter = asyncio.ensure_future(queue.acquire())
        await asyncio.sleep(0)
        assert queue.queued == 1
        with pytest.raises(QueueFull):
            await queue.acquire()  # at once, not after a timeout
        queue.release()
        await waiter  # the freed slot went to the one waiting
        assert (queue.in_flight, queue.queued) == (1, 0)
        queue.release()
        assert queue.in_flight == 0

    asyncio.run(scenario())


def test_queue_wait_is_bounded_and_cancelled_waiters_leave_the_line():
    async def scenario():
        queue = AdmissionQueue(max_in_flight=1, max_queued=2, timeout_s=0.05)
        await queue.acquire()
        with pytest.raises(QueueFull, match="no capacity within"):
            await queue.acquire()
        cancelled = asyncio.ensure_future(queue.acquire())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert queue.queued == 0
        queue.release()
        assert queue.in_flight == 0

    asyncio.run(scenario())


# --- through the gateway ------------------------------------------------------------------------

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_burst_beyond_rpm_gets_429_with_retry_after(gateway):
    gateway.add_key("three-a-minute", rpm=3, tpm=0)
    with gateway.http("three-a-minute") as client:
        statuses = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(3)]
        refused = client.post("/v1/chat/completions", json=CHAT)
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 20


def test_burst_beyond_tpm_gets_429_and_within_gets_200(gateway):
    # Each request reserves its prompt estimate + max_tokens 32; 100 tokens/min hold two of them.
    gateway.add_key("hundred-tokens", rpm=0, tpm=100)
    body = {**CHAT, "max_tokens": 32}
    with gateway.http("hundred-tokens") as client:
        first = client.post("/v1/chat/completions", json=body)
        second = client.post("/v1/chat/completions", json=body)
        # The unused part of each reservation came back, so a third fits if usage stayed small.
        used = sum(r.json()["usage"]["total_tokens"] for r in (first, second))
        big = client.post("/v1/chat/completions", json={**body, "max_tokens": 64})
    assert (first.status_code, second.status_code) == (200, 200)
    assert used < 100
    assert big.status_code == 429 and int(big.headers["retry-after"]) >= 1
    assert "tokens per minute" in big.json()["error"]["message"]


def test_a_request_that_can_never_fit_the_tpm_is_400(gateway):
    gateway.add_key("ten-tokens", rpm=0, tpm=10)
    with gateway.http("ten-tokens") as client:
        response = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 16})
    assert response.status_code == 400 and "lower max_tokens" in response.json()["error"]["message"]


def test_gateway_at_capacity_sheds_load_with_503(gateway):
    queue = gateway.gateway.queue
    saved = queue.max_in_flight, queue.max_queued
    queue.max_in_flight, queue.max_queued = 0, 0  # every slot taken, no room to wait
    try:
        with gateway.http() as client:
            response = client.post("/v1/chat/completions", json=CHAT)
    finally:
        queue.max_in_flight, queue.max_queued = saved
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"
    with httpx.Client(verify=gateway.tls()) as client:
        assert client.get(f"{gateway.url}/health").status_code == 200
