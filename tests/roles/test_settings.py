"""Unknown settings in host data stop a deploy before it starts, naming the closest known one."""

from __future__ import annotations

import pytest

from deepfleet.paths import PROJECT_ROOT, SITE_DEPLOY
from roles.common import RoleError
from roles.defaults import DEFAULTS, ROLE_PREFIXES
from roles.settings import unknown_settings

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
