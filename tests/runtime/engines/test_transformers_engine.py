"""The continuous-batching transformers engine against HF's own generate, on the tiny model."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from deepfleet_runtime.config import SchedulerSection
from deepfleet_runtime.engines.base import GenerationRequest, RequestFailed, SamplingParams
from deepfleet_runtime.engines.scheduler import CapacityError
from deepfleet_runtime.engines.transformers_engine import TransformersEngine

PROMPTS = ["Hello, fleet.", "The quick brown fox jumps over the lazy dog and then", "A token bucket",
           "Hospitals want answers they can trust, from machines they own; a rolling update"]


async def _collect(engine, request_id, ids, params, delay=0.0):
    await asyncio.sleep(delay)
    events = [e async for e in engine.generate(GenerationRequest(request_id, ids, params))]
    return [t for e in events for t in e.token_ids], events


def _run(engine, jobs):
    async def main():  # a stream that never ends is a failure, not a hang
        return await asyncio.wait_for(asyncio.gather(*(_collect(engine, *job) for job in jobs)), 120)
    return asyncio.run(main())


def _hf_greedy(engine, ids, count):
    with torch.no_grad():
        out = engine.model.generate(torch.tensor([ids]), max_new_tokens=count, do_sample=False,
                                    eos_token_id=None, pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def test_greedy_outputs_of_a_batch_equal_hf_one_at_a_time(engine):
    greedy = SamplingParams(24, temperature=0, ignore_eos=True)
    prompts = [engine.encode_text(p) for p in PROMPTS]
    # staggered arrivals: later requests join a batch that is already decoding
    results = _run(engine, [(f"g{i}", ids, greedy, 0.02 * i) for i, ids in enumerate(prompts)])
    for ids, (tokens, events) in zip(prompts, results):
        assert len(tokens) == 24  # never trust a batch API without counting tokens
        assert tokens == _hf_greedy(engine, ids, 24)
        assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 24


def test_seeded_sampling_does_not_depend_on_batch_mates(engine):
    ids = engine.encode_text("The fleet")
    sampled = SamplingParams(16, temperature=0.9, top_p=0.95, top_k=50, seed=7, ignore_eos=True)
    alone = _run(engine, [("alone", ids, sampled)])[0][0]
    others = [(f"mate{i}", engine.encode_text(p), SamplingParams(20, temperature=1.0, seed=i, ignore_eos=True))
              for i, p in enumerate(PROMPTS)]
    together = _run(engine, [("with", ids, sampled), *others])[0][0]
    assert alone == together
    different_seed = _run(engine, [("seed8", ids, SamplingParams(16, temperature=0.9, top_p=0.95, top_k=50, seed=8,
                                                                  ignore_eos=True))])[0][0]
    assert different_seed != alone


def test_requests_join_and_leave_the_running_batch(engine):
    ids = engine.encode_text("Join and leave")
    jobs = [(f"j{i}", ids, SamplingParams(n, temperature=0, ignore_eos=True), d)
            for i, (n, d) in enumerate([(40, 0.0), (5, 0.0), (12, 0.05), (3, 0.1)])]
    seen_batch_sizes = set()

    async def main():
        async def watch():
            for _ in range(400):
                seen_batch_sizes.add(engine.stats().running)
                await asyncio.sleep(0.005)
        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(_collect(engine, *job) for job in jobs))
        watcher.cancel()
        return results

    results = asyncio.run(main())
    assert [len(tokens) for tokens, _ in results] == [40, 5, 12, 3]
    assert max(seen_batch_sizes) >= 2
    # the long request's output is what it would be alone
    assert results[0][0] == _hf_greedy(engine, ids, 40)
    deadline = time.monotonic() + 5
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().running == 0 and engine.stats().kv_cache_used_tokens == 0


def test_closing_a_stream_cancels_the_request_and_frees_its_row(engine):
    ids = engine.encode_text("Cancel me")

    async def main():
        stream = engine.generate(GenerationRequest("c1", ids, SamplingParams(500, temperature=0, ignore_eos=True)))
        got = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        return got

    assert len(asyncio.run(main())) == 3
    deadline = time.monotonic() + 5
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().running == 0
    # the engine keeps serving
    assert len(_run(engine, [("after", ids, SamplingParams(4, temperature=0, ignore_eos=True))])[0][0]) == 4


def test_cancel_by_id_ends_the_stream_with_cancelled(engine):
    ids = engine.encode_text("Cancel by id")

    async def main():
        events = []
        async for event in engine.generate(GenerationRequest("c2", ids, SamplingParams(500, temperature=0,
                                                                                        ignore_eos=True))):
            events.append(event)
            if len(events) == 2:
                engine.cancel("c2")
        return events

    events = asyncio.run(main())
    assert events[-1].finish_reason == "cancelled"
    assert len(events) < 50


def test_a_request_beyond_the_kv_cache_is_refused(tiny_model_dir):
    small = TransformersEngine("tiny", tiny_model_dir, scheduler=SchedulerSection(kv_cache_tokens=64))
    small.load()
    try:
        ids = small.encode_text("short prompt")
        with pytest.raises(CapacityError, match="needs .* KV slots; the cache holds 64"):
            _run(small, [("big", ids, SamplingParams(100, temperature=0))])
        assert len(_run(small, [("fits", ids, SamplingParams(8, temperature=0, ignore_eos=True))])[0][0]) == 8
    finally:
        small.close()


def test_a_tokenizer_without_a_chat_template_gets_deepseeks(engine):
    from deepfleet_runtime.engines.hf_tokens import chat_prompt_ids

    messages = [{"role": "user", "content": "Hi"}]
    tokenizer = engine.tokenizer
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        ids = chat_prompt_ids(tokenizer, messages)
    finally:
        tokenizer.chat_template = saved
    assert tokenizer.decode(ids) == "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>"


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(engine):
    vocabulary = engine.model.config.vocab_size
    with pytest.raises(RequestFailed, match="index out of range"):  # a token id outside the vocabulary
        _run(engine, [("bad", [0, vocabulary + 5], SamplingParams(4, temperature=0))])
    ids = engine.encode_text("still serving")
    assert len(_run(engine, [("good", ids, SamplingParams(4, temperature=0, ignore_eos=True))])[0][0]) == 4
