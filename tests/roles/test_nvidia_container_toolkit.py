"""The NVIDIA container toolkit role per OS x GPU case, planned against recorded facts."""

from __future__ import annotations

import pytest

from roles.nvidia_container_toolkit import nvidia_container_toolkit

from .factplan import changed, expect_plan, find, load_case, plan, with_facts

CASES = ["ubuntu2204-2xa100", "ubuntu2404-rtx4090", "rocky9-8xh100", "rocky10-8xh100", "ubuntu2604-2xh100",
         "debian12-nogpu", "debian12-arm64-edge"]
DAEMON_JSON = "path=/etc/docker/daemon.json"


@pytest.mark.parametrize("case", CASES)
def test_plan_is_the_reviewed_plan(case):
    expect_plan(plan(load_case(case), nvidia_container_toolkit), f"nvidia_container_toolkit/{case}")


def test_packages_are_pinned_the_way_each_package_manager_writes_it():
    apt = find(plan(load_case("ubuntu2204-2xa100"), nvidia_container_toolkit), ": packages").shell()[-1]
    dnf = find(plan(load_case("rocky9-8xh100"), nvidia_container_toolkit), ": packages").shell()[-1]
    assert apt.endswith("install --no-install-recommends nvidia-container-toolkit=1.17.8-1 "
                        "nvidia-container-toolkit-base=1.17.8-1 libnvidia-container-tools=1.17.8-1 "
                        "libnvidia-container1=1.17.8-1")
    assert dnf == ("dnf install -y nvidia-container-toolkit-1.17.8-1 nvidia-container-toolkit-base-1.17.8-1 "
                   "libnvidia-container-tools-1.17.8-1 libnvidia-container1-1.17.8-1")


def test_docker_rendered_by_deepfleet_needs_no_nvidia_ctk():
    ops = plan(load_case("ubuntu2204-2xa100"), nvidia_container_toolkit)
    assert "nvidia-ctk runtime" not in repr([op.commands for op in ops])
    assert find(ops, "Smoke test: a CUDA container lists the GPUs").change == "conditional"


def test_docker_managed_elsewhere_gets_the_runtime_from_nvidia_ctk_and_one_restart():
    ops = plan(load_case("ubuntu2204-2xa100"), nvidia_container_toolkit,
               data={"docker_enabled": False, "nvidia_container_toolkit_default_runtime": True})
    assert find(ops, "Register the nvidia runtime with Docker (nvidia-ctk)").shell() == [
        "nvidia-ctk runtime configure --runtime=docker --config=/etc/docker/daemon.json --set-as-default"]
    restart = find(ops, "Restart docker for the nvidia runtime")
    assert (restart.change, restart.shell()) == ("conditional", ["systemctl restart docker"])


def test_nvidia_ctk_is_not_run_when_daemon_json_declares_the_runtime():
    declared = {DAEMON_JSON: {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}},
                "*": None}
    ops = plan(with_facts(load_case("ubuntu2204-2xa100"), **{"roles.facts.JsonFile": declared}),
               nvidia_container_toolkit, data={"docker_enabled": False})
    register = find(ops, "(nvidia-ctk)")
    assert register.change == "no" and register.notes == ["/etc/docker/daemon.json declares the nvidia runtime"]
    assert "NVIDIA container toolkit | Register the nvidia runtime with Docker (nvidia-ctk)" not in changed(ops)


def test_rocky_with_the_pinned_toolkit_installed_installs_nothing_and_runs_no_smoke_test():
    installed = {name: ["1.17.8-1"] for name in ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                                                 "libnvidia-container-tools", "libnvidia-container1")}
    rocky = load_case("rocky9-8xh100")
    facts = with_facts(rocky, **{"rpm.RpmPackages": {**rocky["rpm.RpmPackages"], **installed},
                                 "files.Sha1File": {"*": None}})
    ops = plan(facts, nvidia_container_toolkit, changed=[])
    assert find(ops, ": packages").change == "no"
    assert find(ops, "Smoke test").change == "no"
    older = with_facts(facts, **{"rpm.RpmPackages": {**facts["rpm.RpmPackages"],
                                                     "nvidia-container-toolkit": ["1.17.5-1"]}})
    assert find(plan(older, nvidia_container_toolkit), ": packages").shell() == [
        "dnf install -y nvidia-container-toolkit-1.17.8-1"]


def test_a_default_runtime_someone_else_set_does_not_make_nvidia_ctk_run_every_time():
    # nvidia-ctk only adds a default runtime, never removes one (NVIDIA pkg/config/engine/docker):
    # running it for default_runtime false changes nothing, so every run would restart Docker.
    daemon = {DAEMON_JSON: {"default-runtime": "nvidia",
                            "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}, "*": None}
    ops = plan(with_facts(load_case("ubuntu2204-2xa100"), **{"roles.facts.JsonFile": daemon}),
               nvidia_container_toolkit, data={"docker_enabled": False})
    register = find(ops, "(nvidia-ctk)")
    assert register.change == "no"
    assert "default-runtime" in register.notes[0]
