"""The Docker role per OS x GPU case, planned against recorded facts; daemon.json as Docker reads it."""

from __future__ import annotations

import itertools
import json

import pytest
from pyinfra.api.util import get_template

from roles.common import RoleError, template
from roles.defaults import DEFAULTS
from roles.docker import daemon_json_context, docker, docker_wanted

from .factplan import changed, expect_plan, find, load_case, plan

CASES = {
    "ubuntu2204-2xa100": ("ubuntu2204-2xa100", {}),
    "ubuntu2404-rtx4090": ("ubuntu2404-rtx4090", {}),
    "rocky9-8xh100": ("rocky9-8xh100", {}),
    "rocky10-8xh100": ("rocky10-8xh100", {}),
    "ubuntu2604-2xh100": ("ubuntu2604-2xh100", {}),
    "debian12-nogpu": ("debian12-nogpu", {}),  # nothing needs Docker there: skipped
    "debian12-nogpu-docker-mode": ("debian12-nogpu", {"runtime_mode": "docker"}),
    "debian12-arm64-edge": ("debian12-arm64-edge", {}),
    "debian12-arm64-edge-enabled": ("debian12-arm64-edge", {"docker_enabled": True}),
}
DAEMON_JSON = "/etc/docker/daemon.json"


@pytest.mark.parametrize("name", CASES)
def test_plan_is_the_reviewed_plan(name):
    case, data = CASES[name]
    expect_plan(plan(load_case(case), docker, data=data), f"docker/{name}")


def _daemon_json(ops) -> dict:
    return json.loads(find(ops, "Docker daemon config").uploads()[DAEMON_JSON])


def test_daemon_json_declares_the_nvidia_runtime_on_gpu_hosts_only():
    gpu = _daemon_json(plan(load_case("ubuntu2204-2xa100"), docker))
    cpu = _daemon_json(plan(load_case("debian12-nogpu"), docker, data={"docker_enabled": True}))
    assert gpu["runtimes"] == {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}
    assert "runtimes" not in cpu and "default-runtime" not in cpu
    assert cpu["log-opts"] == {"max-size": "100m", "max-file": "3"} and cpu["default-shm-size"] == "1G"


@pytest.mark.parametrize(("mirrors", "data_root", "gpu", "default_runtime"),
                         list(itertools.product([[], ["https://mirror.local"]], [None, "/data/docker"],
                                                [False, True], [False, True])))
def test_daemon_json_is_valid_json_for_every_combination(mirrors, data_root, gpu, default_runtime):
    settings = {**DEFAULTS, "docker_registry_mirrors": mirrors, "docker_data_root": data_root,
                "nvidia_container_toolkit_default_runtime": default_runtime}
    config = json.loads(get_template(template("daemon.json.j2")).render(**daemon_json_context(settings, gpu)))
    assert config.get("registry-mirrors", []) == mirrors and config.get("data-root") == data_root
    assert ("runtimes" in config) == gpu
    assert (config.get("default-runtime") == "nvidia") == (gpu and default_runtime)


def test_restart_only_when_daemon_json_changed():
    ops = plan(load_case("ubuntu2204-2xa100"), docker)
    restart = find(ops, "Restart docker for its new config")
    assert restart.change == "conditional"


def test_architecture_comes_from_facts():
    ops = plan(load_case("debian12-arm64-edge"), docker, data={"docker_enabled": True})
    source = find(ops, "apt source").uploads()["/etc/apt/sources.list.d/deepfleet-docker.list"]
    assert source.endswith("deb [arch=arm64 signed-by=/etc/apt/keyrings/deepfleet-docker.asc] "
                           "https://download.docker.com/linux/debian bookworm stable\n")


def test_distro_docker_on_debian_and_refused_on_rocky():
    ops = plan(load_case("debian12-nogpu"), docker, data={"docker_enabled": True, "docker_source": "distro"})
    assert not [op for op in ops if "Docker CE repository" in op.name]
    assert find(ops, "Docker: packages").shell()[-1].endswith("install --no-install-recommends docker.io")
    with pytest.raises(RoleError, match="docker_source 'distro' is not available on rocky"):
        plan(load_case("rocky9-8xh100"), docker, data={"docker_source": "distro"})


@pytest.mark.parametrize(("enabled", "mode", "gpu", "wanted"), [
    ("auto", "systemd", False, False), ("auto", "docker", False, True), ("auto", "systemd", True, True),
    (True, "systemd", False, True), (False, "docker", True, False),
])
def test_which_hosts_get_docker(enabled, mode, gpu, wanted):
    settings = {**DEFAULTS, "docker_enabled": enabled, "runtime_mode": mode}
    assert docker_wanted(settings, gpu)[0] == wanted


def test_a_bad_docker_enabled_value_names_the_choices():
    with pytest.raises(RoleError, match="docker_enabled is 'yes'; use 'auto', true or false"):
        docker_wanted({**DEFAULTS, "docker_enabled": "yes"}, False)


def test_skipped_docker_says_which_setting_would_install_it():
    ops = plan(load_case("debian12-nogpu"), docker)
    assert changed(ops) == [] and "docker_enabled: true installs it anyway" in ops[0].notes[0]
