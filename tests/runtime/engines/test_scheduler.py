"""The batch scheduler's admission policy, finish rules and cancellation (no model needed)."""

from __future__ import annotations

import asyncio

import pytest

from deepfleet_runtime.engines.base import GenerationRequest, SamplingParams
from deepfleet_runtime.engines.scheduler import BatchScheduler, CapacityError, Sequence


class _Decoder:
    """Token i decodes to the character chr(97 + i % 26); stop strings are honoured."""

    def __init__(self, stop=()):
        self.text, self.stop = "", stop

    def push(self, token):
        self.text += chr(97 + token % 26)
        for stop in self.stop:
            if stop in self.text:
                return "", True
        return self.text[-1], False

    def flush(self):
        return ""


def _sequence(request_id, prompt_len, max_tokens, stop=(), ignore_eos=False, loop=None):
    request = GenerationRequest(request_id, [1] * prompt_len, SamplingParams(max_tokens, temperature=0,
                                                                             stop=stop, ignore_eos=ignore_eos))
    return Sequence(request, _Decoder(stop), loop or asyncio.new_event_loop(), asyncio.Queue(), frozenset({0}))


def test_admission_respects_batch_size_prefill_tokens_and_kv_budget():
    scheduler = BatchScheduler(max_batch_size=3, max_batch_tokens=100, kv_cache_tokens=1000)
    for i in range(5):
        scheduler.submit(_sequence(f"r{i}", 40, 60))  # reserves 100 slots each
    first = scheduler.admit()
    assert [s.request_id for s in first] == ["r0", "r1"]  # a third prompt would exceed 100 prefill tokens
    scheduler.running += first
    second = scheduler.admit()
    assert [s.request_id for s in second] == ["r2"]  # batch size 3 reached
    scheduler.running += second
    assert scheduler.admit() == []

    tight = BatchScheduler(max_batch_size=32, max_batch_tokens=4096, kv_cache_tokens=250)
    for i in range(4):
        tight.submit(_sequence(f"t{i}", 40, 60))
    assert len(tight.admit()) == 2  # 3 rows x 100 slots would exceed 250


def test_a_request_larger_than_the_cache_is_refused_with_the_fix():
    scheduler = BatchScheduler(4, 100, kv_cache_tokens=50)
    with pytest.raises(CapacityError, match="lower max_tokens or raise scheduler.kv_cache_tokens"):
        scheduler.check_fits(_sequence("big", 20, 40).request)


def test_finish_rules_eos_stop_and_length():
    eos = _sequence("a", 1, 10)
    assert eos.accept(0).finish_reason == "stop" and eos.finished
    ignored = _sequence("b", 1, 2, ignore_eos=True)
    assert ignored.accept(0).finish_reason is None
    assert ignored.accept(5).finish_reason == "length" and ignored.produced == 2
    stopped = _sequence("c", 1, 10, stop=("bc",))
    assert stopped.accept(1).finish_reason is None
    assert stopped.accept(2).finish_reason == "stop"


def test_cancelling_a_queued_request_ends_its_stream():
    loop = asyncio.new_event_loop()
    scheduler = BatchScheduler(1, 100, 1000)
    queued = _sequence("q", 5, 5, loop=loop)
    scheduler.submit(queued)
    scheduler.cancel("q")
    assert scheduler.take_cancelled() == []  # it was not running: removed from the queue instead
    assert scheduler.admit() == []
    event = loop.run_until_complete(asyncio.wait_for(queued.queue.get(), 5))
    assert event.finish_reason == "cancelled"
    loop.close()
