"""The slot cache: a row's tokens stay where they were written while rows come and go; the tensors
grow in quanta within the budget, exactly when it is tight, and are freed when no row is left."""

from __future__ import annotations

import torch

from deepfleet_runtime.engines.slot_cache import SlotCache


def _write(cache: SlotCache, slot: int, columns: range, value: float, layers: int = 2) -> None:
    tokens = len(columns)
    cache.begin_step(torch.tensor([slot] * tokens), torch.tensor(list(columns)))
    for layer in range(layers):
        keys = torch.full((1, 2, tokens, 4), value)
        cache.update(keys, keys + 1, layer)


def test_rows_keep_their_slots_and_columns_while_others_join_and_leave():
    cache = SlotCache(budget_tokens=10_000, max_slots=8)
    first, second = cache.acquire(), cache.acquire()
    cache.reserve(2, 10)
    _write(cache, first, range(0, 5), 1.0)
    _write(cache, second, range(0, 3), 2.0)
    storage = cache.layers[0][0].data_ptr()
    cache.release(first)
    third = cache.acquire()
    assert third == first  # the lowest free slot is reused; nothing moved
    _write(cache, third, range(0, 2), 3.0)
    assert cache.layers[0][0].data_ptr() == storage
    assert cache.layers[1][1][second, :, :3].eq(3.0).all()  # values are keys + 1
    assert cache.layers[0][0][third, :, :2].eq(3.0).all()


def test_growth_in_quanta_within_the_budget_and_exact_when_tight():
    roomy = SlotCache(budget_tokens=100_000, max_slots=32)
    roomy.reserve(3, 300)
    assert (roomy.slots, roomy.columns) == (8, 512)
    tight = SlotCache(budget_tokens=900, max_slots=32)
    tight.reserve(3, 300)
    assert (tight.slots, tight.columns) == (3, 300) and tight.allocated_tokens <= 900


def test_reallocation_keeps_what_was_written_and_idle_frees_it():
    cache = SlotCache(budget_tokens=100_000, max_slots=32)
    slots = [cache.acquire() for _ in range(3)]
    cache.reserve(3, 10)
    _write(cache, slots[2], range(0, 6), 5.0)
    cache.reserve(9, 600)  # more rows and a longer reservation: the tensors are reallocated
    assert cache.slots >= 9 and cache.columns >= 600
    assert cache.layers[0][0][slots[2], :, :6].eq(5.0).all()
    for slot in slots:
        cache.release(slot)
    assert cache.layers == {} and cache.allocated_tokens == 0


def test_slots_spanned_counts_holes_left_by_rows_that_left():
    cache = SlotCache(budget_tokens=1000, max_slots=8)
    slots = [cache.acquire() for _ in range(4)]
    cache.release(slots[1])
    assert cache.slots_spanned(3) == 4  # slot 3 is still used
    assert cache.slots_spanned(4) == 4  # a new row takes the hole
    assert cache.slots_spanned(5) == 5


def test_mla_latents_sit_side_by_side_in_one_tensor():
    cache = SlotCache(budget_tokens=1000, max_slots=4, latent_width=6)
    slot = cache.acquire()
    cache.reserve(1, 4)
    cache.begin_step(torch.tensor([slot, slot]), torch.tensor([0, 1]))
    cache.update(torch.ones(1, 1, 2, 6), torch.full((1, 1, 2, 2), 7.0), 0)
    (latent,) = cache.layers[0]
    assert latent.shape[-1] == 8
    assert latent[slot, 0, :2, :6].eq(1).all() and latent[slot, 0, :2, 6:].eq(7).all()
