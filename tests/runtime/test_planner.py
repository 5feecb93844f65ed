"""The capacity planner against published figures and against the tiny model's measured memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import DynamicCache

from deepfleet_runtime import planner
from deepfleet_runtime.engines.loading import load_model_and_tokenizer
from deepfleet_runtime.quantize import QuantizationPlan, weight_bytes

DEEPSEEK_V3 = dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                   num_hidden_layers=61, first_k_dense_replace=3, num_attention_heads=128, num_key_value_heads=128,
                   q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                   n_routed_experts=256, n_shared_experts=1, tie_word_embeddings=False)
DEEPSEEK_67B = dict(vocab_size=102400, hidden_size=8192, intermediate_size=22016, num_hidden_layers=95,
                    num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)


def test_published_figures():
    assert planner.parameter_count(DEEPSEEK_V3) == pytest.approx(671e9, rel=0.01)
    assert planner.kv_bytes_per_token(DEEPSEEK_V3) / 1024 == pytest.approx(68.6, abs=0.1)  # MLA latent
    assert planner.weight_bytes(DEEPSEEK_67B, "none", "bfloat16") == pytest.approx(134e9, rel=0.02)
    assert planner.kv_bytes_per_token(DEEPSEEK_67B) / 1024 == pytest.approx(380, rel=0.01)  # GQA, 8 KV heads


def test_fit_and_tensor_parallel_degree():
    two_a100 = planner.parse_gpus("2xA100-80GB")
    assert not planner.plan(DEEPSEEK_67B, two_a100, "none").fits  # 134 GB + KV > 2 x 80 GB x 0.8
    int8 = planner.plan(DEEPSEEK_67B, two_a100, "int8")
    assert int8.fits and int8.tensor_parallel == 2
    int4 = planner.plan(DEEPSEEK_67B, two_a100, "int4")
    assert int4.fits and int4.tensor_parallel == 1  # the smallest degree that fits
    assert int4.weight_bytes < 0.3 * planner.weight_bytes(DEEPSEEK_67B, "none")
    assert "int4" in planner.plan(DEEPSEEK_V3, planner.parse_gpus("1xRTX4090-24GB"), "int8").detail
    with pytest.raises(planner.PlanError, match="COUNTxNAME"):
        planner.parse_gpus("2xB999")


def test_a_model_one_host_cannot_hold_is_spread_over_hosts_tensor_within_pipeline_across():
    h100 = planner.parse_gpus("8xH100-80GB")
    assert not planner.plan(DEEPSEEK_V3, h100, "fp8").fits  # 672 GB of fp8 weights > 8 x 80 GB x 0.8
    two = planner.plan_nodes(DEEPSEEK_V3, h100, 4, "fp8")
    assert (two.fits, two.tensor_parallel, two.pipeline_parallel) == (True, 8, 2)  # the fewest hosts
    assert "tensor parallel 8 x pipeline parallel 2" in two.detail
    assert planner.plan_nodes(DEEPSEEK_V3, h100, 4, "bf16").pipeline_parallel == 3
    one = planner.plan_nodes(DEEPSEEK_V3, h100, 4, "int4")  # fits one host: no pipeline
    assert (one.tensor_parallel, one.pipeline_parallel) == (8, 1) and one == planner.plan(DEEPSEEK_V3, h100, "int4")
    short = planner.plan_nodes(DEEPSEEK_V3, h100, 2, "bf16")
    assert not short.fits and "more than 2 hosts of 8 x H100-80GB" in short.detail


@pytest.mark.parametrize("quantization, dtype, plan", [
    ("none", "float32", QuantizationPlan("none", "none")),
    ("bf16", "float32", QuantizationPlan("bf16", "none")),
    ("int8", "bfloat16", QuantizationPlan("int8", "torchao")),
])
def test_weight_bytes_match_the_loaded_tiny_model(tiny_model_dir, quantization, dtype, plan):
    model, _ = load_model_and_tokenizer(tiny_model_dir, dtype, "cpu", plan)
    predicted = planner.weight_bytes(planner.load_config(tiny_model_dir), quantization, dtype)
    assert predicted == pytest.approx(weight_bytes(model), rel=0.10)


def test_kv_bytes_per_token_match_the_cache_of_the_tiny_model(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, "float32", "cpu", QuantizationPlan("none", "none"))
    ids = torch.tensor([tokenizer.encode("a prompt of some length for the cache " * 3)])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, cache=cache, use_cache=True)
    measured = sum(l.keys.numel() * 4 + l.values.numel() * 4 for l in cache.layers) / ids.shape[1]
    assert planner.kv_bytes_per_token(planner.load_config(tiny_model_dir), 4) == pytest.approx(measured, rel=0.10)


def test_plan_command_prints_json_and_exits_1_when_it_does_not_fit(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(DEEPSEEK_67B))
    command = [sys.executable, "-m", "deepfleet_runtime.cli", "plan", str(tmp_path), "--json"]
    fits = subprocess.run(command + ["--gpus", "2xA100-80GB", "--quantization", "int4"], capture_output=True, text=True)
    assert fits.returncode == 0 and json.loads(fits.stdout)["tensor_parallel"] == 1
    too_big = subprocess.run(command + ["--gpus", "1xA100-80GB"], capture_output=True, text=True)
    assert too_big.returncode == 1 and json.loads(too_big.stdout)["fits"] is False
    spread = subprocess.run(command + ["--gpus", "1xA100-80GB", "--nodes", "4"], capture_output=True, text=True)
    assert spread.returncode == 0 and json.loads(spread.stdout)["pipeline_parallel"] == 3  # 134 GB / 64 GB usable


def test_planner_imports_without_torch():
    code = "import sys, deepfleet_runtime.planner; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
