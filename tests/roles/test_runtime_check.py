"""runtime.yaml is checked on the control machine while planning, with the runtime's own loader and
engine checks: what the runtime would refuse at start stops `deepfleet plan`, in settings' words."""

from __future__ import annotations

import pytest

from deepfleet.paths import SITE_DEPLOY
from roles.common import RoleError

from .factplan import load_case, plan


def _refusal(data, case="debian12-nogpu", host_name="h1") -> str:
    with pytest.raises(RoleError) as error:
        plan(load_case(case), SITE_DEPLOY, data=data, host_name=host_name)
    return str(error.value)


def test_int4_through_torchao_on_cpu_is_refused_at_plan_naming_the_settings(wheelhouse, control_data):
    message = _refusal({**control_data, "runtime_quantization": "int4", "runtime_quantization_method": "torchao"})
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
            "nvidia_driver_branch": "580", "cuda_version": "13.0"}
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
