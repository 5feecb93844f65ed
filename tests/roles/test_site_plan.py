"""The site deploy of the example inventories, planned against the facts of their hosts.

The control side's inputs are small stand-ins (conftest.py: a tiny model directory, a fresh CA,
a small injected wheelhouse); the host side is what the roles would run there.
"""

from __future__ import annotations

import re
import runpy

import pytest
import yaml

from deepfleet.paths import PROJECT_ROOT, SITE_DEPLOY
from roles.defaults import DEFAULTS

from .factplan import changed, find, load_case, plan

INVENTORIES = PROJECT_ROOT / "inventories"
GPU_ROLES = ["NVIDIA driver", "CUDA toolkit", "Docker", "NVIDIA container toolkit"]


def _deploys_in_order(names: list[str]) -> list[str]:
    order = []
    for name in names:
        deploy = name.split(" | ")[0]
        if not order or order[-1] != deploy:
            order.append(deploy)
    return order


def _runtime_yaml(ops) -> dict:
    return yaml.safe_load(find(ops, "Runtime config").uploads()["/etc/deepfleet/runtime.yaml"])


@pytest.fixture
def dual_a100(wheelhouse, control_data):
    return plan(load_case("ubuntu2204-2xa100"), SITE_DEPLOY, data=control_data,
                inventory=INVENTORIES / "dual_a100.py")


def test_dual_a100_site_runs_driver_cuda_docker_toolkit_model_runtime_gateway_in_order(dual_a100):
    assert _deploys_in_order(changed(dual_a100)) == [
        "deepfleet base", *GPU_ROLES, "Log limits", "deepfleet model", "deepfleet runtime", "deepfleet gateway"]
    steps = {op.name: " ".join(op.shell()) for op in dual_a100}
    assert "install linux-headers-5.15.0-119-generic nvidia-driver-580-open cuda-drivers-580" in steps[
        "NVIDIA driver | NVIDIA driver 580 for A100: packages"]
    assert steps["CUDA toolkit | CUDA toolkit 13.0: packages"].endswith("cuda-toolkit-13-0")
    assert "docker-ce docker-ce-cli containerd.io" in steps["Docker | Docker: packages"]
    assert "nvidia-container-toolkit=1.17.8-1" in steps["NVIDIA container toolkit | NVIDIA container toolkit: packages"]


def test_dual_a100_runtime_is_vllm_in_a_gpu_container_across_both_gpus(dual_a100, wheelhouse):
    config = _runtime_yaml(dual_a100)
    assert config["engine"] == "vllm" and config["device"] == "cuda"
    assert config["model"]["name"] == "deepseek-llm-67b-chat"
    # The host venv gets the light package for the gateway (on Python 3.11: see below); the image
    # gets the vLLM extra, pinned for CUDA.
    assert wheelhouse.requests == [
        {"python": "3.11", "machine": "x86_64", "glibc": "2.35", "accelerator": "cuda", "extras": []},
        {"python": "3.12", "machine": "x86_64", "glibc": "2.39", "accelerator": "cuda", "extras": ["vllm"]},
    ]
    dockerfile = next(iter(find(dual_a100, "build context: Dockerfile").uploads().values()))
    assert dockerfile.splitlines()[2] == "FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS python"
    requirements = next(iter(find(dual_a100, "build context: hashed requirements").uploads().values()))
    assert "deepfleet_runtime-0.1.0-py3-none-any.whl[vllm] --hash=sha256:" in requirements
    run = find(dual_a100, "Runtime container deepfleet-runtime").shell()[0]
    assert re.search(r" --gpus all --user 0:0 --entrypoint /bin/sh deepfleet-runtime:[0-9a-f]{16} -c ", run)
    assert run.endswith(" serve --config /opt/deepfleet/releases/current/runtime.yaml")
    assert "--shm-size 32g" in run and "--restart unless-stopped" in run


def test_ubuntu_2204_hosts_get_python_311_from_ubuntu_for_the_runtime_venv(dual_a100):
    # Ubuntu 22.04's python3 is 3.10 and deepfleet-runtime needs 3.11: universe's python3.11 it is.
    base = find(dual_a100, "deepfleet base | Base: packages").shell()
    assert base == ["DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=\"--force-confdef\" -o "
                    "Dpkg::Options::=\"--force-confold\" install --no-install-recommends python3.11 python3.11-venv"]
    install = find(dual_a100, "Install deepfleet-runtime").shell()[0]
    assert re.fullmatch(r"test -x (/opt/deepfleet/venvs/[0-9a-f]{16}-[0-9a-z]{16})/bin/python3\.11 \|\| "
                        r"env SOURCE_DATE_EPOCH=315532800 python3\.11 -m venv --clear \1", install)


def test_dual_a100_runtime_config_carries_tensor_parallel_2_and_awq(dual_a100):
    config = _runtime_yaml(dual_a100)
    assert config["vllm"]["tensor_parallel_size"] == 2
    assert config["quantization"] == {"mode": "int4", "method": "awq"}


@pytest.mark.parametrize("inventory", sorted(p.stem for p in (INVENTORIES / "group_data").glob("*.py")))
def test_example_inventories_use_only_known_settings(inventory):
    data = {k: v for k, v in runpy.run_path(str(INVENTORIES / "group_data" / f"{inventory}.py")).items()
            if not k.startswith("_")}
    assert [key for key in data if key not in DEFAULTS and not key.startswith("ssh_")] == []


def test_rtx4090_uses_ubuntus_driver_and_runs_the_runtime_under_systemd(wheelhouse, control_data):
    ops = plan(load_case("ubuntu2404-rtx4090"), SITE_DEPLOY, data=control_data, inventory=INVENTORIES / "rtx4090.py")
    assert _deploys_in_order(changed(ops)) == [
        "deepfleet base", *GPU_ROLES, "Log limits", "deepfleet model", "deepfleet runtime", "deepfleet gateway"]
    assert "nvidia-headless-580-server-open nvidia-utils-580-server" in " ".join(
        find(ops, "NVIDIA driver 580 for RTX4090: packages").shell())
    # CUDA torch (runtime/constraints-cuda.txt), not the CPU pins, and the extra its int8 needs.
    assert wheelhouse.requests == [{"python": "3.12", "machine": "x86_64", "glibc": "2.39", "accelerator": "cuda",
                                    "extras": ["transformers", "quantization"]}]
    assert find(ops, "Runtime systemd unit").change == "yes"
    assert not [op for op in ops if "container" in op.name.lower() and op.name.startswith("deepfleet runtime")
                and op.change == "yes"]
    assert _runtime_yaml(ops)["device"] == "cuda"


def test_edge_profile_on_arm64_runs_no_nvidia_role_and_builds_aarch64_wheels(wheelhouse, control_data, gguf_model):
    ops = plan(load_case("debian12-arm64-edge"), SITE_DEPLOY, data={**control_data, "model_source": str(gguf_model)},
               inventory=INVENTORIES / "edge.py")
    skipped = {op.name.split(" | ")[0]: op.notes[0] for op in ops if op.name.endswith(": skipped")}
    assert skipped == {
        "NVIDIA driver": "no NVIDIA device on the PCI bus (sysfs vendor 0x10de)",
        "CUDA toolkit": "no NVIDIA device on the PCI bus",
        "Docker": "docker_enabled is false (Docker is managed outside deepfleet)",
        "NVIDIA container toolkit": "no NVIDIA device on the PCI bus",
    }
    assert not [name for name in changed(ops) if name.split(" | ")[0] in GPU_ROLES]
    assert wheelhouse.requests == [{"python": "3.11", "machine": "aarch64", "glibc": "2.36", "accelerator": "cpu",
                                    "extras": ["llamacpp"]}]
    assert _runtime_yaml(ops)["engine"] == "llamacpp"


def test_a_host_without_gpu_gets_no_gpu_step(wheelhouse, control_data):
    ops = plan(load_case("debian12-nogpu"), SITE_DEPLOY, data=control_data)
    assert _deploys_in_order(changed(ops)) == ["deepfleet base", "Log limits", "deepfleet model",
                                               "deepfleet runtime", "deepfleet gateway"]
    assert [op.name for op in ops if op.name.endswith(": skipped")] == [f"{role} | {role}: skipped" for role in GPU_ROLES]


def test_rocky9_site_installs_with_dnf_and_runs_the_runtime_on_python_311(wheelhouse, control_data):
    data = {**control_data, "runtime_device": "cuda", "nvidia_driver_branch": "580", "cuda_version": "13.0"}
    ops = plan(load_case("rocky9-8xh100"), SITE_DEPLOY, data=data)
    assert _deploys_in_order(changed(ops)) == [
        "deepfleet base", *GPU_ROLES, "Log limits", "deepfleet firewall", "deepfleet model", "deepfleet runtime",
        "deepfleet gateway"]  # firewall: firewalld runs there by default, the gateway port is opened
    assert find(ops, "Open deepfleet's ports in firewalld").shell() == [
        "firewall-cmd --permanent --add-port=8443/tcp", "firewall-cmd --reload"]
    # Rocky 9's python3 is 3.9: the runtime's venv gets AppStream's python3.11, through dnf.
    assert find(ops, "deepfleet base | Base: packages").shell() == ["dnf install -y python3.11"]
    assert re.fullmatch(r"test -x (/opt/deepfleet/venvs/[0-9a-f]{16}-[0-9a-z]{16})/bin/python3\.11 \|\| "
                        r"env SOURCE_DATE_EPOCH=315532800 python3\.11 -m venv --clear \1",
                        find(ops, "Install deepfleet-runtime").shell()[0])
    assert not [op.name for op in ops if "apt" in " ".join(op.shell())]
    assert wheelhouse.requests == [{"python": "3.11", "machine": "x86_64", "glibc": "2.34", "accelerator": "cuda",
                                    "extras": ["transformers"]}]
