"""A step's cost does not grow with churn: joining, leaving and decoding never re-copy the running
rows' KV cache, however long their context and however rows came and went."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from deepfleet_runtime.config import SchedulerSection
from deepfleet_runtime.engines.base import SamplingParams
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from tests.runtime.engines.test_transformers_engine import _hf_greedy, _run

aten = torch.ops.aten
# ops that move tensor data without computing on it: concatenations, gathers and padding
MOVES = {aten.cat.default, aten.stack.default, aten.index_select.default, aten.index.Tensor,
         aten.constant_pad_nd.default, aten.gather.default}


class _CountMoves(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in MOVES:
            self.elements += out.numel()
        return out


def _measure_steps(engine) -> list[tuple[int, int]]:
    """(elements moved, tokens fed to the model) of every engine step from now on."""
    steps, step, forward = [], engine._step, engine.model.forward
    fed = [0]

    def counting_forward(*args, **kwargs):
        fed[0] += kwargs["input_ids"].numel()
        return forward(*args, **kwargs)

    def counting_step():
        fed[0] = 0
        with _CountMoves() as moves:
            step()
        if fed[0]:
            steps.append((moves.elements, fed[0]))

    engine.model.forward = counting_forward
    engine._step = counting_step
    return steps


def test_steps_move_data_by_the_tokens_they_feed_not_by_the_cache_they_hold(tiny_model_dir):
    engine = TransformersEngine("tiny", tiny_model_dir, scheduler=SchedulerSection(max_batch_size=8))
    engine.load()
    try:
        steps = _measure_steps(engine)
        long_ids = engine.encode_text("A long answer about fleets")
        long = SamplingParams(160, temperature=0, ignore_eos=True)
        assert len(_run(engine, [("alone", long_ids, long)])[0][0]) == 160
        alone = [moved / fed for moved, fed in steps[1:]]  # decode steps of one row, context 6..166
        per_token = alone[0]
        assert max(alone) <= 1.05 * per_token, (alone[0], alone[-1])  # no growth with the context

        # the same long row, with rows joining and leaving while it decodes
        steps.clear()
        mates = [(f"mate{i}", engine.encode_text(f"Mate {i} joins"), SamplingParams(3 + i % 4, temperature=0,
                                                                                     ignore_eos=True), 0.05 + 0.04 * i)
                 for i in range(10)]
        results = _run(engine, [("churn", long_ids, long), *mates])
        assert results[0][0] == _hf_greedy(engine, long_ids, 160)
        for (job_id, ids, params, _), (tokens, _) in zip(mates, results[1:]):
            assert tokens == _hf_greedy(engine, ids, params.max_tokens), job_id
        worst = max(moved / fed for moved, fed in steps)
        assert worst <= 2 * per_token, (worst, per_token)
    finally:
        engine.close()
