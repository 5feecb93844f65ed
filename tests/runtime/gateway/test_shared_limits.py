"""Limits shared by several gateways in a real redis-server (sharedlimits.py, store.py): each
"gateway" here is its own SharedLimiter with its own client, as two gateway processes would be."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deepfleet_runtime.gateway.auth import KeyRecord
from deepfleet_runtime.gateway.config import LimitsSection, LimitsStoreSection
from deepfleet_runtime.gateway.limits import Refusal
from deepfleet_runtime.gateway.sharedlimits import SharedLimiter, SharedReservation
from deepfleet_runtime.gateway.store import LimitsStore
from tests.runtime.gateway.redisserver import RedisServer


@pytest.fixture
def redis(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _section(server: RedisServer, **extra) -> LimitsStoreSection:
    options = {"gateways": 2, "timeout_s": 2.0, "retry_s": 0.1} | extra  # timeouts: see redisserver.py
    return LimitsStoreSection(url=server.url, password_file=server.password_file, prefix=f"t{server.port}:", **options)


async def _gateways(server: RedisServer, count: int = 2, **extra) -> list[SharedLimiter]:
    limiters = []
    for _ in range(count):
        store = LimitsStore(_section(server, **extra))
        await store.start()
        limiters.append(SharedLimiter(store, LimitsSection()))
    return limiters


async def _close(limiters: list[SharedLimiter]) -> None:
    for limiter in limiters:
        await limiter.store.aclose()


def test_two_gateways_admit_together_what_one_key_may_per_minute(redis):
    key = KeyRecord("k", "x", rpm=10, tpm=0, concurrency=0)

    async def scenario():
        limiters = await _gateways(redis)
        answers = await asyncio.gather(*(limiters[i % 2].admit(key, 5) for i in range(40)))
        errors = [limiter.store.error for limiter in limiters]
        await _close(limiters)
        return answers, errors

    answers, errors = asyncio.run(scenario())
    assert errors == [None, None]  # else each gateway admitted its local share, not the store's count
    admitted = [a for a in answers if isinstance(a, SharedReservation)]
    refused = [a for a in answers if isinstance(a, Refusal)]
    assert len(admitted) == 10 and len(refused) == 30
    assert all("10 requests per minute" in r.reason and 0 < r.retry_after_s <= 6.1 for r in refused)


def test_unused_tokens_go_back_to_the_shared_bucket_and_extra_ones_are_taken(redis):
    key = KeyRecord("k", "x", rpm=0, tpm=100, concurrency=0)

    async def scenario():
        first, second = await _gateways(redis)
        reservation = await first.admit(key, 80)
        assert isinstance(await second.admit(key, 30), Refusal)  # 80 of 100 reserved on the other gateway
        reservation.settle(used_tokens=20)  # 60 come back
        await asyncio.sleep(0.1)
        again = await second.admit(key, 70)
        assert isinstance(again, SharedReservation)
        again.settle(used_tokens=100)  # 30 more than reserved: taken
        await asyncio.sleep(0.1)
        refusal = await first.admit(key, 30)
        assert isinstance(refusal, Refusal) and "100 tokens per minute" in refusal.reason
        too_big = await first.admit(key, 101)
        assert isinstance(too_big, Refusal) and too_big.retry_after_s is None
        await _close([first, second])

    asyncio.run(scenario())


def test_concurrency_slots_are_leases_a_dead_gateway_frees_by_expiry(redis):
    key = KeyRecord("k", "x", rpm=0, tpm=0, concurrency=2)

    async def scenario():
        live, dying = await _gateways(redis, lease_s=0.6)
        held = await live.admit(key, 1)
        lost = await dying.admit(key, 1)  # its gateway dies without settling
        refusal = await live.admit(key, 1)
        assert isinstance(refusal, Refusal) and "2 requests in flight" in refusal.reason
        dying._leases.clear()  # it stops renewing: as if its process were gone
        await asyncio.sleep(1.2)  # past the lease; `held` is renewed every lease_s / 3 meanwhile
        third = await live.admit(key, 1)
        assert isinstance(third, SharedReservation), third
        assert isinstance(await live.admit(key, 1), Refusal)  # held + third: the renewed lease holds
        held.settle(0)
        await asyncio.sleep(0.1)
        assert isinstance(await live.admit(key, 1), SharedReservation)
        assert isinstance(lost, SharedReservation)
        await _close([live, dying])

    asyncio.run(scenario())


def test_store_down_each_gateway_admits_its_share_never_unlimited_never_nothing_then_shares_again(redis):
    key = KeyRecord("k", "x", rpm=10, tpm=0, concurrency=0)
    tiny = KeyRecord("tiny", "y", rpm=1, tpm=0, concurrency=0)

    async def scenario():
        first, second = await _gateways(redis)
        redis.stop()
        answers = await asyncio.gather(*(gateway.admit(key, 5) for gateway in (first, second) for _ in range(20)))
        assert sum(isinstance(a, SharedReservation) for a in answers) == 0
        local = [a for a in answers if not isinstance(a, Refusal)]
        assert len(local) == 10  # 5 each: half of 10 per gateway
        assert first.local_admitted == second.local_admitted == 5
        assert not first.store.up and first.store.state()["store"] == "unreachable"
        assert first.store.state()["local_fraction"] == 0.5
        assert not isinstance(await first.admit(tiny, 1), Refusal)  # 1/2 of 1 rounds up to 1, not 0
        redis.start()
        for _ in range(50):
            if first.store.up and second.store.up:
                break
            await asyncio.sleep(0.1)
        assert first.store.up and second.store.up and first.store.failures == 1
        fresh = KeyRecord("fresh", "z", rpm=4, tpm=0, concurrency=0)
        shared = await asyncio.gather(*(gateway.admit(fresh, 1) for gateway in (first, second) for _ in range(5)))
        assert sum(isinstance(a, SharedReservation) for a in shared) == 4
        await _close([first, second])

    asyncio.run(scenario())


def test_a_wrong_password_is_an_unreachable_store_not_an_open_one(redis, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    key = KeyRecord("k", "x", rpm=2, tpm=0, concurrency=0)

    async def scenario():
        store = LimitsStore(LimitsStoreSection(url=redis.url, password_file=Path(wrong), gateways=2, timeout_s=0.3))
        await store.start()
        limiter = SharedLimiter(store, LimitsSection())
        answers = [await limiter.admit(key, 1) for _ in range(3)]
        state = store.state()
        await store.aclose()
        return answers, state

    answers, state = asyncio.run(scenario())
    assert state["store"] == "unreachable" and "password" in state["error"].lower()
    assert [isinstance(a, Refusal) for a in answers] == [False, True, True]  # 1 of 2: this gateway's share


def test_more_requests_at_once_than_connections_wait_for_one_and_the_store_stays_up(redis):
    key = KeyRecord("k", "x", rpm=10_000, tpm=0, concurrency=0)

    async def scenario():
        (limiter,) = await _gateways(redis, count=1)
        answers = await asyncio.gather(*(limiter.admit(key, 1) for _ in range(400)))
        up, failures = limiter.store.up, limiter.store.failures
        await _close([limiter])
        return answers, up, failures

    answers, up, failures = asyncio.run(scenario())
    assert (up, failures) == (True, 0)
    assert all(isinstance(a, SharedReservation) for a in answers)


def test_budget_counts_while_the_store_is_down_spend_only_this_gateways_share_then_are_handed_over(redis):
    from deepfleet_runtime.gateway.budgets import Budgets

    key = KeyRecord("k", "x", rpm=0, tpm=0, concurrency=0, tokens_per_day=100)

    async def scenario():
        store = LimitsStore(_section(redis))
        await store.start()
        budgets = Budgets.for_gateway(store, None)
        budgets.charge(key, 40)
        await asyncio.sleep(0.1)
        assert await budgets.check(key) is None  # 40 of 100, seen in the store
        redis.stop()
        budgets.charge(key, 20)  # its write fails: counted here
        await asyncio.sleep(0.2)
        assert not store.up and await budgets.check(key) is None  # 40 + 20 x 2 gateways = 80
        budgets.charge(key, 10)
        exhausted = await budgets.check(key)  # 40 + 30 x 2 = 100: this gateway's half of the 60 left is spent
        assert exhausted is not None and "tokens today" in exhausted.reason
        redis.start()
        for _ in range(50):
            if store.up:
                break
            await asyncio.sleep(0.1)
        assert store.up
        (day_tokens, _), = await budgets.counts.usage("k", [budgets.now().strftime("day:%Y-%m-%d")])
        await store.aclose()
        return day_tokens

    assert asyncio.run(scenario()) == 70  # the charges made meanwhile were handed to the store
