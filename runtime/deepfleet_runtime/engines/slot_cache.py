"""The running rows' KV cache: one slot per row, written in place.

Per layer, each quantity the model caches is one tensor [slots, heads, columns, dim]: keys and
values, or for DeepSeek's multi-head latent attention (MLA) one latent, the compressed KV and the
rotary key side by side. A row owns a slot from joining to leaving and its tokens sit at columns
0..length-1, so a step writes only its new tokens (`update`, which the model's attention layers
call), joining takes a free slot and leaving frees it: nobody's cache is copied when rows come and
go. The tensors are reallocated only when the rows or the longest reservation outgrow them, or
must shrink to let new rows fit the budget (slots x columns <= budget_tokens), copying them once.
"""

from __future__ import annotations

import torch

SLOT_QUANTUM, COLUMN_QUANTUM = 8, 256  # growth steps, so that tensors are not reallocated per join


class SlotCache:
    """KV tensors of the running rows, a slot per row; `allocated_tokens` is what they hold."""

    def __init__(self, budget_tokens: int, max_slots: int, latent_width: int | None = None):
        self.budget_tokens = budget_tokens
        self.max_slots = max_slots
        self.latent_width = latent_width  # MLA: the compressed KV's width; the rotary key follows it
        self.slots = self.columns = 0  # allocated
        self.layers: dict[int, list[torch.Tensor]] = {}  # layer index -> [keys, values] or [latent]
        self._used: set[int] = set()
        self._write: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's (slot, column) per token

    @property
    def allocated_tokens(self) -> int:
        return self.slots * self.columns

    def slots_spanned(self, rows: int) -> int:
        """Slots the tensors must span (highest used + 1) once `rows` rows hold one, new rows
        taking the lowest free slots."""
        top, missing = max(self._used, default=-1), rows - len(self._used)
        for slot in range(self.max_slots):
            if missing <= 0:
                break
            if slot not in self._used:
                top, missing = max(top, slot), missing - 1
        return top + 1

    def acquire(self) -> int:
        """The lowest free slot, now used."""
        slot = next(s for s in range(self.max_slots) if s not in self._used)
        self._used.add(slot)
        return slot

    def release(self, slot: int) -> None:
        self._used.discard(slot)
        if not self._used:  # idle: give the memory back
            self.layers.clear()
            self.slots = self.columns = 0

    def reserve(self, slots: int, columns: int) -> None:
        """Room for `slots` slots of `columns` columns; every used slot and written column must lie
        within them. Grows in quanta while the budget allows, else exactly."""
        if slots <= self.slots and columns <= self.columns and self.allocated_tokens <= self.budget_tokens:
            return
        candidates = ((min(self.max_slots, max(self.slots, _round_up(slots, SLOT_QUANTUM))),
                       max(self.columns, _round_up(columns, COLUMN_QUANTUM))),
                      (max(slots, self.slots), max(columns, self.columns)),
                      (slots, columns))
        new_slots, new_columns = next(((s, c) for s, c in candidates if s * c <= self.budget_tokens),
                                      (slots, columns))
        keep_slots, keep_columns = min(self.slots, new_slots), min(self.columns, new_columns)
        for index, tensors in self.layers.items():
            grown = []
            for old in tensors:
                new = old.new_zeros((new_slots, old.shape[1], new_columns, old.shape[3]))
                new[:keep_slots, :, :keep_columns] = old[:keep_slots, :, :keep_columns]
                grown.append(new)
            self.layers[index] = grown
        self.slots, self.columns = new_slots, new_columns

    def begin_step(self, slots: torch.Tensor, columns: torch.Tensor) -> None:
        """Where this step's tokens go: the slot and column of each packed token."""
        self._write = (slots, columns)

    def update(self, first: torch.Tensor, second: torch.Tensor, layer_idx: int, *args, **kwargs):
        """transformers' Cache.update: store a layer's new tokens ([1, heads, tokens, dim] each: keys
        and values, or MLA's compressed KV and rotary key) in their slots; returns them unchanged
        (the attention reads the cache itself)."""
        slots, columns = self._write
        tensors = self.layers.get(layer_idx)
        if tensors is None:
            tensors = self.layers[layer_idx] = self._allocate(first, second)
        if self.latent_width is None:
            tensors[0][slots, :, columns] = first[0].transpose(0, 1)
            tensors[1][slots, :, columns] = second[0].transpose(0, 1)
        else:
            tensors[0][slots, :, columns, :self.latent_width] = first[0].transpose(0, 1)
            tensors[0][slots, :, columns, self.latent_width:] = second[0].transpose(0, 1)
        return first, second

    def _allocate(self, first: torch.Tensor, second: torch.Tensor) -> list[torch.Tensor]:
        # zeros: masked columns are multiplied by zero probabilities, which NaN garbage would survive
        if self.latent_width is None:
            return [first.new_zeros((self.slots, t.shape[1], self.columns, t.shape[3])) for t in (first, second)]
        width = first.shape[3] + second.shape[3]
        return [first.new_zeros((self.slots, 1, self.columns, width))]


def _round_up(value: int, quantum: int) -> int:
    return -(-value // quantum) * quantum
