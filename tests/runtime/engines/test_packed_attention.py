"""Models with standard (GQA) attention take the same packed steps as DeepSeek's MLA: greedy
outputs equal HF's one request at a time, with staggered arrivals and chunked prompts; attention
variants the packed steps do not compute are refused at load, naming the engine that does."""

from __future__ import annotations

import pytest

from deepfleet_runtime.config import SchedulerSection
from deepfleet_runtime.engines.base import ModelLoadError, SamplingParams
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from tests.runtime.engines.test_transformers_engine import _hf_greedy, _run


def _tiny_model(directory, tiny_model_dir, config_class, **extra):
    """A random-weight model of `config_class` with the tiny model's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = config_class(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_gqa_model_in_packed_steps_equals_hf_one_at_a_time(tmp_path, tiny_model_dir):
    from transformers import LlamaConfig

    model_dir = _tiny_model(tmp_path / "llama", tiny_model_dir, LlamaConfig)
    engine = TransformersEngine("llama", model_dir, scheduler=SchedulerSection(max_batch_size=4, max_batch_tokens=64))
    engine.load()
    try:
        prompts = [engine.encode_text(" ".join(["a long prompt about fleets and hosts"] * 12)),
                   engine.encode_text("Hello"), engine.encode_text("The gateway checks each request"),
                   engine.encode_text("Short")]
        assert len(prompts[0]) > 64  # prefilled in chunks
        greedy = SamplingParams(12, temperature=0, ignore_eos=True)
        results = _run(engine, [(f"g{i}", ids, greedy, 0.03 * i) for i, ids in enumerate(prompts)])
        for ids, (tokens, _) in zip(prompts, results):
            assert tokens == _hf_greedy(engine, ids, 12)
    finally:
        engine.close()


def test_a_sliding_window_model_is_refused_at_load_naming_vllm(tmp_path, tiny_model_dir):
    from transformers import MistralConfig

    model_dir = _tiny_model(tmp_path / "mistral", tiny_model_dir, MistralConfig, sliding_window=16)
    with pytest.raises(ModelLoadError, match="sliding_window.*engine: vllm"):
        TransformersEngine("mistral", model_dir).load()


@pytest.mark.parametrize("batched_tokens", [0, 10**9], ids=["row-by-row", "whole-slots"])
def test_mla_decoding_row_by_row_and_over_whole_slots_equals_hf(engine, monkeypatch, batched_tokens):
    from deepfleet_runtime.engines import packed_step

    monkeypatch.setattr(packed_step, "BATCHED_DECODE_TOKENS", batched_tokens)
    prompts = [engine.encode_text(text) for text in
               ("Hi", "The quick brown fox jumps over the lazy dog " * 6, "A token bucket refills", "Fleet")]
    greedy = SamplingParams(20, temperature=0, ignore_eos=True)
    results = _run(engine, [(f"d{i}", ids, greedy, 0.02 * i) for i, ids in enumerate(prompts)])
    for ids, (tokens, _) in zip(prompts, results):
        assert tokens == _hf_greedy(engine, ids, 20)
