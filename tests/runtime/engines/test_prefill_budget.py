"""Prefill memory is budgeted as it is spent: no forward carries more tokens than max_batch_tokens,
and long and short prompts share a step without every row being padded to the longest."""

from __future__ import annotations

import pytest

from deepfleet_runtime.config import SchedulerSection
from deepfleet_runtime.engines.base import SamplingParams
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from tests.runtime.engines.test_transformers_engine import _hf_greedy, _run

NEW_TOKENS = 6
GREEDY = SamplingParams(NEW_TOKENS, temperature=0, ignore_eos=True)


def _budget_engine(tiny_model_dir, max_batch_tokens: int) -> TransformersEngine:
    engine = TransformersEngine("tiny", tiny_model_dir,
                                scheduler=SchedulerSection(max_batch_size=8, max_batch_tokens=max_batch_tokens))
    engine.load()
    return engine


def _record_forward_tokens(engine) -> list[int]:
    """The number of token positions (padding included) of every forward the engine runs from now on."""
    sizes, forward = [], engine.model.forward

    def recording(*args, **kwargs):
        sizes.append(kwargs["input_ids"].numel())
        return forward(*args, **kwargs)

    engine.model.forward = recording
    return sizes


def _prompts(engine) -> tuple[list[int], list[list[int]]]:
    long = engine.encode_text(" ".join(["the fleet serves a model to a hospital"] * 60))
    short = [engine.encode_text(f"Short {i}: a token bucket") for i in range(7)]
    return long, short


@pytest.mark.parametrize("long_first", [True, False])
def test_no_forward_carries_more_tokens_than_the_step_budget(tiny_model_dir, long_first):
    engine = _budget_engine(tiny_model_dir, max_batch_tokens=128)
    try:
        long, short = _prompts(engine)
        assert len(long) > 3 * 128  # prefilled in chunks
        prompts = [long, *short] if long_first else [*short[:3], long, *short[3:]]
        sizes = _record_forward_tokens(engine)
        results = _run(engine, [(f"p{i}", ids, GREEDY) for i, ids in enumerate(prompts)])
        assert max(sizes) <= 128, sizes
        for ids, (tokens, _) in zip(prompts, results):
            assert tokens == _hf_greedy(engine, ids, NEW_TOKENS)
    finally:
        engine.close()


def test_long_and_short_prompts_share_a_step_without_padding(tiny_model_dir):
    engine = _budget_engine(tiny_model_dir, max_batch_tokens=2048)
    try:
        long, short = _prompts(engine)
        prompts = [*short[:3], long, *short[3:]]
        sizes = _record_forward_tokens(engine)
        results = _run(engine, [(f"s{i}", ids, GREEDY) for i, ids in enumerate(prompts)])
        assert max(sizes) <= 2048, sizes
        # the long prompt shared its forward with other rows, none of them padded to its length
        assert len(long) < max(sizes) < 2 * len(long), sizes
        assert engine.stats().kv_cache_used_tokens <= engine.stats().kv_cache_capacity_tokens
        for ids, (tokens, _) in zip(prompts, results):
            assert tokens == _hf_greedy(engine, ids, NEW_TOKENS)
    finally:
        engine.close()


def test_the_kv_cache_allocated_stays_within_its_budget_while_rows_come_and_go(tiny_model_dir):
    budget = 1536
    engine = TransformersEngine("tiny", tiny_model_dir, scheduler=SchedulerSection(
        max_batch_size=8, max_batch_tokens=256, kv_cache_tokens=budget))
    engine.load()
    try:
        long, short = _prompts(engine)
        allocated, rows, step = [], [], engine._step

        def recording_step():
            step()
            allocated.append(engine._cache.allocated_tokens)  # what the slot tensors really hold
            rows.append(len(engine._scheduler.running))

        engine._step = recording_step
        greedy = lambda count: SamplingParams(count, temperature=0, ignore_eos=True)  # noqa: E731
        # three short rows leave at once, one stays in slot 3: a row joining then spans 4 slots,
        # not 2, so a 520-token reservation must wait (4 x 520 > budget although 2 x 520 is not)
        jobs = [*[(f"quick{i}", short[i], greedy(2), 0.0) for i in range(3)], ("stays", short[3], greedy(150), 0.0),
                ("long", long[:500], greedy(20), 0.15), ("late", short[4], greedy(10), 0.2)]
        results = _run(engine, jobs)
        assert max(rows) > 1 and max(allocated) > 0  # rows shared the cache
        assert max(allocated) <= budget, max(allocated)
        for (_, ids, params, _), (tokens, _) in zip(jobs, results):
            assert tokens == _hf_greedy(engine, ids, params.max_tokens)
    finally:
        engine.close()
