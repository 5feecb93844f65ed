"""Quantisation: impossible combinations fail with the fix; each CPU path really shrinks the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepfleet_runtime.config import ModelSection, RuntimeConfig
from deepfleet_runtime.engines import build_engine
from deepfleet_runtime.engines.base import EngineConfigError
from deepfleet_runtime.engines.loading import load_model_and_tokenizer
from deepfleet_runtime.quantize import QuantizationPlan, resolve_quantization, tensor_bytes, weight_bytes


@pytest.mark.parametrize("engine, device, mode, method, capability, fix", [
    ("transformers", "cpu", "int4", "torchao", None, "method: bitsandbytes"),
    ("vllm", "cuda", "fp8", "auto", (8, 0), "compute capability 8.9"),
    ("transformers", "cpu", "fp8", "auto", None, "vllm engine on a GPU"),
    ("vllm", "cuda", "int4", "auto", None, "awq or gptq"),
    ("vllm", "cuda", "int8", "torchao", None, "bitsandbytes"),
    ("transformers", "cuda", "int4", "awq", None, "vllm engine"),
    ("llamacpp", "cpu", "int8", "auto", None, "convert-gguf"),
    ("transformers", "cpu", "none", "torchao", None, "quantised mode"),
])
def test_impossible_combinations_name_the_fix(engine, device, mode, method, capability, fix):
    with pytest.raises(EngineConfigError, match=fix):
        resolve_quantization(engine, device, mode, method, capability)


def test_possible_combinations_pick_a_method():
    assert resolve_quantization("transformers", "cpu", "int8").method == "torchao"
    assert resolve_quantization("transformers", "cpu", "int4").method == "bitsandbytes"
    assert resolve_quantization("transformers", "cuda", "int4").method == "torchao"
    assert resolve_quantization("vllm", "cuda", "fp8", gpu_capability=(9, 0)).vllm_quantization == "fp8"
    assert resolve_quantization("vllm", "cuda", "int4", "awq").vllm_quantization == "awq"
    assert resolve_quantization("vllm", "cuda", "int8").vllm_quantization == "bitsandbytes"


@pytest.mark.parametrize("engine, path, device, fix", [
    ("vllm", "/models/tiny-q8_0.gguf", "cuda", "only the llamacpp engine"),
    ("llamacpp", "/models/tiny", "cpu", "convert-gguf"),
    ("vllm", "/models/tiny", "mps", "runs on device cuda .* or cpu"),
])
def test_build_engine_refuses_a_model_the_engine_cannot_serve(engine, path, device, fix):
    config = RuntimeConfig(ModelSection("m", Path(path)), engine=engine, device=device)
    with pytest.raises(EngineConfigError, match=fix):
        build_engine(config)


@pytest.fixture(scope="module")
def fp32_model(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir, "float32", "cpu", QuantizationPlan("none", "none"))


def _logits(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("The fleet serves models to hospitals")])
    with torch.no_grad():
        return model(ids).logits[0, -1].float()


def _experts(model):
    return [p for n, p in model.named_parameters() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]


def test_bf16_halves_the_weights(tiny_model_dir, fp32_model):
    bf16, _ = load_model_and_tokenizer(tiny_model_dir, "float32", "cpu", QuantizationPlan("bf16", "none"))
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16
    fp32_bytes = weight_bytes(fp32_model[0], linear_and_experts_only=True)
    assert weight_bytes(bf16, linear_and_experts_only=True) == fp32_bytes // 2


def test_torchao_int8_quantises_the_expert_weights_too(tiny_model_dir, fp32_model):
    int8, tokenizer = load_model_and_tokenizer(tiny_model_dir, "bfloat16", "cpu", QuantizationPlan("int8", "torchao"))
    bf16, _ = load_model_and_tokenizer(tiny_model_dir, "float32", "cpu", QuantizationPlan("bf16", "none"))
    experts = _experts(int8)
    assert experts and all(tensor_bytes(p) < p.numel() * 2 for p in experts)  # under 2 bytes per weight
    ratio = weight_bytes(int8, linear_and_experts_only=True) / weight_bytes(bf16, linear_and_experts_only=True)
    assert ratio <= 0.55
    cosine = torch.nn.functional.cosine_similarity(_logits(int8, tokenizer), _logits(*fp32_model), dim=0)
    assert cosine > 0.99


def test_bitsandbytes_int8_skips_mla_kv_b_proj_and_still_runs(tiny_model_dir, fp32_model):
    pytest.importorskip("bitsandbytes", reason="deepfleet-runtime[quantization] installs bitsandbytes")
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, "float32", "cpu",
                                                QuantizationPlan("int8", "bitsandbytes"))
    linear = dict(model.named_modules())["model.layers.0.self_attn.q_b_proj"]
    assert linear.weight.dtype == torch.int8
    assert dict(model.named_modules())["model.layers.0.self_attn.kv_b_proj"].weight.dtype == torch.float32
    assert weight_bytes(model) < weight_bytes(fp32_model[0])
    cosine = torch.nn.functional.cosine_similarity(_logits(model, tokenizer), _logits(*fp32_model), dim=0)
    assert cosine > 0.99


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_bitsandbytes_says_that_it_leaves_the_moe_experts_unquantised(tiny_model_dir, mode, caplog):
    pytest.importorskip("bitsandbytes", reason="deepfleet-runtime[quantization] installs bitsandbytes")
    with caplog.at_level("WARNING", logger="deepfleet_runtime.engines.loading"):
        model, _ = load_model_and_tokenizer(tiny_model_dir, "float32", "cpu", QuantizationPlan(mode, "bitsandbytes"))
    assert all(p.dtype.is_floating_point for p in _experts(model))  # bitsandbytes cannot reach fused experts
    assert any("MoE expert weights" in r.message and "unquantised" in r.message and "torchao" in r.message
               for r in caplog.records), caplog.text


def test_torchao_quantises_before_the_weights_move_to_the_device(tiny_model_dir, monkeypatch):
    """An int8 model that fits the GPU only once quantised must never be there whole in bf16:
    torchao's quantize_(device=...) moves one module at a time and quantises it there."""
    from deepfleet_runtime.engines import loading

    calls, original_apply, original_to = [], loading.apply_torchao, torch.nn.Module.to

    def apply(model, mode, device=None):
        calls.append(("quantise", str(device)))
        original_apply(model, mode, device)

    def move(self, *args, **kwargs):
        if self.__class__.__name__.endswith("ForCausalLM"):
            calls.append(("move", str(args[0] if args else kwargs)))
        return original_to(self, *args, **kwargs)
    monkeypatch.setattr(loading, "apply_torchao", apply)
    monkeypatch.setattr(torch.nn.Module, "to", move)
    load_model_and_tokenizer(tiny_model_dir, "bfloat16", "cpu", QuantizationPlan("int8", "torchao"))
    assert calls[0] == ("quantise", "cpu"), calls
