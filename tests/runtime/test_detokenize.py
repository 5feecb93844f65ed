"""Incremental detokenization: stop strings never leak, broken UTF-8 is held back."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from deepfleet_runtime.engines.detokenize import IncrementalDecoder


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _feed(decoder, ids):
    out, stopped = [], False
    for token in ids:
        delta, stopped = decoder.push(token)
        out.append(delta)
        if stopped:
            break
    return "".join(out), stopped


def test_deltas_concatenate_to_the_full_text(tokenizer):
    ids = tokenizer.encode("deepfleet serves models to hospitals", add_special_tokens=False)
    text, stopped = _feed(IncrementalDecoder(tokenizer), ids)
    assert not stopped
    assert text == tokenizer.decode(ids)


def test_stop_string_spanning_tokens_is_cut_and_never_emitted(tokenizer):
    ids = tokenizer.encode("one two three four", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer, stop=("three",))
    text, stopped = _feed(decoder, ids)
    assert stopped
    assert text == "one two "


def test_partial_stop_prefix_is_released_by_flush(tokenizer):
    ids = tokenizer.encode("one two thr", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer, stop=("three",))
    text, stopped = _feed(decoder, ids)
    assert not stopped
    assert text == "one two "
    assert decoder.flush() == "thr"


def test_incomplete_utf8_waits_for_the_next_token(tokenizer):
    ids = tokenizer.encode("café ü", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    deltas = [decoder.push(token)[0] for token in ids]
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) == "café ü"
