"""What one step of the transformers engine feeds the model, as one packed sequence.

First one token for every decoding row (in slot order), then prompt chunks in arrival order: a
step carries at most max_batch_tokens tokens, and a prompt longer than what is left is prefilled in
chunks over several steps. Rows are never padded: a step costs what its tokens cost, and its
memory is what it feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .ragged_attention import Chunk, MlaWeights, StepLayout
from .scheduler import Sequence
from .slot_cache import SlotCache

# Decoding rows attend in one product over their slots (up to the longest row's length) while that
# covers at most this many cache columns in all, else row by row over exactly their own tokens: below
# it the per-call cost of small products dominates, above it the padding does (measured on a 2-core
# AVX512/AMX Xeon, bf16).
BATCHED_DECODE_TOKENS = 8192


@dataclass
class PackedStep:
    decoding: list[Sequence]  # one token each: the last one sampled
    chunks: list[tuple[Sequence, int]] = field(default_factory=list)  # (row, its prompt tokens in this step)

    @classmethod
    def plan(cls, running: list[Sequence], budget: int) -> tuple["PackedStep", int]:
        """The step of the rows already running, and the prompt tokens still free in `budget`."""
        step = cls(sorted((s for s in running if s.next_token is not None), key=lambda s: s.slot))
        budget -= len(step.decoding)
        for sequence in running:
            if sequence.next_token is None:
                budget = step.add_prompt(sequence, budget)
        return step, budget

    def add_prompt(self, sequence: Sequence, budget: int) -> int:
        """Prefill what fits of `sequence`'s prompt (at least one token when nothing else
        prefills, so a long prompt always progresses); returns the budget left."""
        count = min(sequence.prompt_left, max(budget, 0 if self.chunks else 1))
        if count > 0:
            self.chunks.append((sequence, count))
        return budget - count

    @property
    def tokens(self) -> int:
        return len(self.decoding) + sum(count for _, count in self.chunks)

    @property
    def sampling(self) -> list[Sequence]:
        """The rows that get a new token from this step: decoding rows, then completed prompts."""
        return self.decoding + [s for s, count in self.chunks if count == s.prompt_left]

    def units(self) -> list["PackedStep"]:
        """The step split where failures can be told apart: the decode rows together, each chunk alone."""
        parts = [PackedStep(self.decoding)] if self.decoding else []
        return parts + [PackedStep([], [chunk]) for chunk in self.chunks]

    def inputs(self, cache: SlotCache, mla: dict[int, MlaWeights], device) -> tuple[torch.Tensor, ...]:
        """(input_ids [1, tokens], position_ids [1, tokens], logits index [rows sampled], StepLayout);
        tells `cache` where the tokens go."""
        ids = [s.next_token for s in self.decoding]
        slots = [s.slot for s in self.decoding]
        columns = [s.cached for s in self.decoding]
        keep, chunks = list(range(len(ids))), []
        for sequence, count in self.chunks:
            chunks.append(Chunk(sequence.slot, sequence.cached, count, len(ids)))
            ids += sequence.request.prompt_token_ids[sequence.cached:sequence.cached + count]
            slots += [sequence.slot] * count
            columns += range(sequence.cached, sequence.cached + count)
            if count == sequence.prompt_left:
                keep.append(len(ids) - 1)
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)  # noqa: E731
        positions = as_tensor(columns)
        cache.begin_step(as_tensor(slots), positions)
        return as_tensor(ids)[None], positions[None], as_tensor(keep), self._layout(cache, mla, device, chunks)

    def _layout(self, cache: SlotCache, mla, device, chunks: list[Chunk]) -> StepLayout:
        lengths = [(s.slot, s.cached + 1) for s in self.decoding]
        span = self.decoding[-1].slot + 1 if self.decoding else 0
        width = max((length for _, length in lengths), default=0)  # the longest decoding row
        blocked = None
        if self.decoding and (not mla or span * width <= BATCHED_DECODE_TOKENS):
            allowed = torch.ones(span, dtype=torch.long)  # slots of other rows: one column, never read
            allowed[[slot for slot, _ in lengths]] = torch.tensor([length for _, length in lengths])
            blocked = (torch.arange(width)[None, :] >= allowed[:, None]).to(device)
        slots = torch.tensor([slot for slot, _ in lengths], dtype=torch.long).to(device)
        return StepLayout(cache, slots, lengths, span, width, blocked, tuple(chunks), mla)

    def advance(self) -> None:
        """After the step ran: the fed tokens are in the cache."""
        for sequence in self.decoding:
            sequence.cached += 1
        for sequence, count in self.chunks:
            sequence.cached += count
