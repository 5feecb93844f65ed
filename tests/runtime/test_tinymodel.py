"""The tiny model builder: local tokenizer by default, DeepSeek's real tokenizers on request."""

from __future__ import annotations

import json

import pytest

from deepfleet_runtime.tinymodel import build_tiny_model, real_tokenizer_names

transformers = pytest.importorskip("transformers")


def test_real_r1_tokenizer_model_keeps_deepseeks_tokens_and_template(r1_model_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(r1_model_dir)
    config = json.loads((r1_model_dir / "config.json").read_text())
    # Facts of DeepSeek-R1's published tokenizer (../shared/notes/cpu-inference.md).
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1)
    assert tokenizer.convert_tokens_to_ids(["<think>", "</think>"]) == [128798, 128799]
    assert "</think>" in tokenizer.decode([5, 128799, 6], skip_special_tokens=True)
    assert config["vocab_size"] == 129280 and config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert config["kv_lora_rank"] + config["qk_rope_head_dim"] == 576
    assert (config["topk_method"], config["scoring_func"]) == ("noaux_tc", "sigmoid")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.startswith("<｜begin▁of▁sentence｜><｜User｜>Hi") and prompt.endswith("<｜Assistant｜><think>\n")


def test_real_tokenizer_model_generates(r1_model_dir):
    import torch

    model = transformers.AutoModelForCausalLM.from_pretrained(r1_model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(r1_model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == ids.shape[1] + 4 and int(out[0, 0]) == tokenizer.bos_token_id


def test_unknown_real_tokenizer_names_the_choices(tmp_path):
    assert "deepseek-r1" in real_tokenizer_names() and "deepseek-r1-distill-qwen-7b" in real_tokenizer_names()
    with pytest.raises(ValueError, match="deepseek-r1-distill-qwen-7b"):
        build_tiny_model(tmp_path / "m", tokenizer="deepseek-r9", shape="vllm-cpu")
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())

