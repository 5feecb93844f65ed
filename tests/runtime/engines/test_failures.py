"""Failures stay with the request that caused them; a broken device takes the engine out of
service (readiness false, the service restarts); shutdown ends every stream with an error."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from deepfleet_runtime.config import SchedulerSection
from deepfleet_runtime.engines.base import EngineUnavailable, GenerationRequest, RequestFailed, SamplingParams
from deepfleet_runtime.engines.transformers_engine import TransformersEngine

GREEDY = SamplingParams(30, temperature=0, ignore_eos=True)


async def _collect(engine, request_id, ids, params, delay=0.0):
    await asyncio.sleep(delay)
    tokens = []
    async for event in engine.generate(GenerationRequest(request_id, ids, params)):
        tokens += event.token_ids
    return tokens


def _run(engine, jobs):
    async def main():
        return await asyncio.wait_for(asyncio.gather(*(_collect(engine, *job) for job in jobs),
                                                     return_exceptions=True), 120)
    return asyncio.run(main())


def _hf_greedy(engine, ids, count):
    with torch.no_grad():
        out = engine.model.generate(torch.tensor([ids]), max_new_tokens=count, do_sample=False,
                                    eos_token_id=None, pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


@pytest.fixture()
def fresh_engine(tiny_model_dir):
    engine = TransformersEngine("tiny", tiny_model_dir, scheduler=SchedulerSection(max_batch_size=2))
    engine.load()
    yield engine
    engine.close()


def test_nan_probabilities_in_one_row_fail_only_that_request(engine):
    ids = engine.encode_text("Side by side")
    # a temperature this small overflows the scaled logits: inf - inf gives NaN probabilities
    nan = SamplingParams(10, temperature=1e-45, ignore_eos=True)
    seeded = SamplingParams(12, temperature=0.8, seed=5, ignore_eos=True)
    alone = _run(engine, [("seeded-alone", ids, seeded)])[0]
    long, failed, mate = _run(engine, [("long", ids, GREEDY), ("nan", ids, nan, 0.05), ("mate", ids, seeded, 0.05)])
    assert isinstance(failed, RequestFailed) and "nan" in str(failed).lower()
    assert long == _hf_greedy(engine, ids, 30)
    assert mate == alone


def test_a_prefill_failure_fails_only_the_request_that_caused_it(engine):
    ids = engine.encode_text("Prefill together")
    vocabulary = engine.model.config.vocab_size
    short = SamplingParams(6, temperature=0, ignore_eos=True)
    # the bad and the good request join the running batch in the same step
    long, bad, good = _run(engine, [("long", ids, GREEDY), ("bad", [0, vocabulary + 5], short, 0.05),
                                    ("good", ids, short, 0.05)])
    assert isinstance(bad, RequestFailed) and "index" in str(bad).lower()
    assert long == _hf_greedy(engine, ids, 30)
    assert good == _hf_greedy(engine, ids, 6)


def test_a_broken_device_makes_the_engine_unready_and_asks_for_a_restart(fresh_engine, monkeypatch):
    engine, fatal = fresh_engine, []
    engine.on_fatal = fatal.append
    ids = engine.encode_text("Device")

    async def main():
        stream = engine.generate(GenerationRequest("victim", ids, SamplingParams(200, temperature=0, ignore_eos=True)))
        await stream.__anext__()

        def broken(*args, **kwargs):
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        monkeypatch.setattr(engine.model, "forward", broken)
        with pytest.raises(EngineUnavailable, match="illegal memory access"):
            async for _ in stream:
                pass
        with pytest.raises(EngineUnavailable, match="restart"):
            await engine.generate(GenerationRequest("later", ids, SamplingParams(2, temperature=0))).__anext__()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert not engine.ready
    assert len(fatal) == 1 and "illegal memory access" in fatal[0]


def test_shutdown_ends_running_and_queued_streams_with_an_error(fresh_engine):
    engine = fresh_engine
    ids = engine.encode_text("Shutdown")
    many = SamplingParams(2000, temperature=0, ignore_eos=True)

    async def main():
        tasks = [asyncio.create_task(_collect(engine, f"s{i}", ids, many)) for i in range(3)]  # 2 run, 1 waits
        deadline = time.monotonic() + 30
        while engine.stats().running < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert engine.stats().waiting == 1
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    results = asyncio.run(main())
    assert all(isinstance(r, EngineUnavailable) and "shutting down" in str(r) for r in results), results
