"""Unknown settings and bad values in host data stop a deploy before it starts: a misspelt name names
the closest setting, a bad value the allowed ones."""

from __future__ import annotations

import pytest

from deepfleet.paths import PROJECT_ROOT, SITE_DEPLOY
from roles.common import RoleError
from roles.defaults import DEFAULTS, ROLE_PREFIXES, SETTINGS
from roles.setting import declare
from roles.settings import bad_values, unknown_settings

from .factplan import load_case, plan

DEPLOYS = sorted((PROJECT_ROOT / "deploys").glob("*.py"))


def test_a_misspelt_setting_stops_the_site_deploy_naming_the_setting_meant(wheelhouse, control_data):
    data = {**control_data, "runtime_tensor_parallel_size": 2}
    with pytest.raises(RoleError) as error:
        plan(load_case("debian12-nogpu"), SITE_DEPLOY, data=data, host_name="gpu1")
    assert str(error.value).startswith("host gpu1: 'runtime_tensor_parallel_size' is not a setting "
                                       "(did you mean 'runtime_vllm_tensor_parallel_size'?)")
    assert "roles/defaults.py" in str(error.value)
    assert wheelhouse.requests == []  # nothing was prepared


def test_every_unknown_setting_is_named_and_others_data_is_left_alone():
    keys = ["model_nmae", "gateway_prot", "model_watermark_strength", "runtime_port",  # ours: two typos, a feature to come
            "ssh_user", "_sudo", "docker_identifier", "hospital_ward"]  # pyinfra's, a connector's, the user's own
    assert unknown_settings(keys) == [
        "'gateway_prot' is not a setting (did you mean 'gateway_port'?)",
        "'model_nmae' is not a setting (did you mean 'model_name'?)",
        "'model_watermark_strength' is not a setting (no setting has a similar name)",
    ]


def test_every_setting_carries_a_role_prefix_so_the_check_covers_it():
    assert [key for key in DEFAULTS if not key.startswith(ROLE_PREFIXES)] == []


@pytest.mark.parametrize("deploy", [path.name for path in DEPLOYS])
def test_every_deploy_checks_the_settings_before_anything_else(deploy, wheelhouse, control_data):
    with pytest.raises(RoleError, match="'model_nmae' is not a setting"):
        plan(load_case("debian12-nogpu"), PROJECT_ROOT / "deploys" / deploy, data={**control_data, "model_nmae": "x"})


def test_a_value_no_engine_allows_stops_the_plan_naming_setting_value_and_allowed_ones(wheelhouse, control_data):
    data = {**control_data, "runtime_engine": "llamacpp", "runtime_quantization": "q4_0"}
    with pytest.raises(RoleError) as error:
        plan(load_case("debian12-nogpu"), SITE_DEPLOY, data=data, host_name="edge1")
    assert str(error.value).startswith("host edge1: runtime_quantization is 'q4_0'; allowed with runtime_engine "
                                       "'llamacpp': 'none'.")
    assert wheelhouse.requests == []  # refused before anything was prepared


def test_a_value_of_the_wrong_type_is_refused_with_the_type():
    assert bad_values({"runtime_port": "8000", "docker_enabled": "yes", "verify_gpu_count": None,
                       "model_push_max_rate_mb_s": 50, "runtime_gpu_memory_fraction": True}) == [
        "docker_enabled is 'yes'; allowed: 'auto', True, False",
        "runtime_port is '8000', which is no int",
        "runtime_gpu_memory_fraction is True, which is no float",
    ]


def test_the_allowed_values_follow_the_engine():
    assert bad_values({"runtime_engine": "vllm", "runtime_quantization": "fp8"}) == []
    assert bad_values({"runtime_engine": "transformers", "runtime_quantization": "fp8"}) == [
        "runtime_quantization is 'fp8'; allowed with runtime_engine 'transformers': 'none', 'bf16', 'int8', 'int4'"]
    assert bad_values({"runtime_engine": "vllm", "runtime_quantization_method": "torchao"}) == [
        "runtime_quantization_method is 'torchao'; allowed with runtime_engine 'vllm': 'auto', 'bitsandbytes', "
        "'awq', 'gptq'"]


def test_every_default_is_a_valid_value_of_its_own_setting():
    assert bad_values({}) == []
    for engine in ("transformers", "vllm", "llamacpp"):
        assert bad_values({"runtime_engine": engine}) == []


def test_every_setting_says_what_it_is():
    assert [name for name, setting in declare(SETTINGS).items() if not setting.doc] == []
