"""Joining and leaving a left-padded batch keeps every row's cache and trims shared padding."""

from __future__ import annotations

import torch

from deepfleet_runtime.engines.padded_batch import PaddedBatch


class _Layer:
    def __init__(self, keys):
        self.keys, self.values = keys, keys * 10


class _Cache:
    def __init__(self, keys):
        self.layers = [_Layer(keys.clone()), _Layer(keys.clone() + 1)]


def _batch(lengths, width, fill):
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    keys = (mask * fill).float()[:, None, :, None].expand(-1, 1, -1, 2).clone()  # [rows, 1, cols, 2]
    return PaddedBatch(_Cache(keys), mask, torch.tensor(lengths), torch.tensor([7] * len(lengths)))


def test_merge_left_pads_the_narrower_side_and_keeps_rows_in_order():
    running = _batch([3, 2], 3, fill=1)
    joining = _batch([5], 5, fill=2)
    running.merge(joining)
    assert running.rows == 3 and running.columns == 5
    assert running.mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert running.cache.layers[0].keys[:, 0, :, 0].tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [2, 2, 2, 2, 2]]
    assert running.lengths.tolist() == [3, 2, 5]


def test_keep_drops_rows_and_trims_columns_that_became_padding_for_all():
    batch = _batch([3, 2], 3, fill=1)
    batch.merge(_batch([5], 5, fill=2))
    batch.keep([1, 0])  # the long row left
    assert batch.columns == 3
    assert batch.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch.cache.layers[1].values.shape[:3] == (2, 1, 3)
    assert batch.lengths.tolist() == [2, 3]


def test_decode_inputs_extend_the_mask_and_advance_positions():
    batch = _batch([3, 1], 3, fill=1)
    ids, mask, positions = batch.decode_inputs()
    assert ids.tolist() == [[7], [7]]
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert positions.tolist() == [[3], [1]]
    assert batch.lengths.tolist() == [4, 2]
