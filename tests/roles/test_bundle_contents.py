"""What a bundle must hold for an inventory, asked of the roles (the build cannot reach the hosts)."""

from __future__ import annotations

import pytest

from deepfleet.inventoryfile import load_inventory
from deepfleet.paths import PROJECT_ROOT
from roles.bundle_contents import bundle_spec, inventory_bundle_spec
from roles.common import RoleError
from roles.defaults import DEFAULTS

HOSPITAL = PROJECT_ROOT / "inventories" / "hospital.py"


def _hosts(path=HOSPITAL, **overrides) -> list[tuple[str, dict]]:
    return [(host.name, {**DEFAULTS, **host.data.dict(), **overrides}) for host in load_inventory(path)]


def test_the_hospital_bundle_holds_the_gpu_stack_for_debian_12_from_the_vendors_repositories():
    spec = bundle_spec(_hosts())
    (target,) = spec.os_targets
    assert (target.key, target.resolver_image) == ("debian-12-amd64", "debian:12")
    assert {"linux-headers-6.1.0-28-amd64", "nvidia-kernel-open-dkms", "cuda-drivers-580", "cuda-toolkit-13-0",
            "docker-ce", "containerd.io", "nvidia-container-toolkit=1.17.8-1", "python3-venv"} <= set(target.packages)
    sources = {source.name: source for source in target.sources}
    # NVIDIA's Debian instructions enable contrib, where the driver's dependencies are
    assert sorted(sources) == ["cuda", "debian-nvidia", "docker", "nvidia-container-toolkit"]
    assert sources["debian-nvidia"].apt_list.endswith(" http://deb.debian.org/debian bookworm contrib\n")
    assert sources["cuda"].key_url == ("https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"
                                       "3bf863cc.pub")
    assert "signed-by=/etc/apt/keyrings/deepfleet-docker.asc] https://download.docker.com/linux/debian bookworm stable" \
        in sources["docker"].apt_list
    # GPU nodes: vLLM under systemd; the gateway host (until issue 6's upstreams): the default engine.
    assert [wheel.key for wheel in spec.wheels] == ["cp311-x86_64-glibc2.36-cpu-transformers",
                                                    "cp311-x86_64-glibc2.36-cuda-vllm"]
    # the toolkit's smoke test and verify's CUDA sample (deploys/verify.py), never pulled
    assert spec.images == ("nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0", "nvidia/cuda:12.8.1-base-ubuntu24.04")
    assert [model.name for model in spec.models] == ["deepseek-r1-distill-qwen-32b"]
    assert spec.hosts == {"gpu-1": "debian-12-amd64", "gpu-2": "debian-12-amd64", "gateway-1": "debian-12-amd64"}


def test_a_cpu_host_in_systemd_mode_needs_the_base_packages_only():
    (target,) = bundle_spec([("h1", {**DEFAULTS, "bundle_host_os": "debian-12"})]).os_targets
    assert (target.packages, target.sources) == (("ca-certificates", "python3", "python3-venv"), ())


def test_docker_mode_brings_docker_the_image_base_and_the_images_wheels():
    settings = {**DEFAULTS, "bundle_host_os": "ubuntu-24.04", "runtime_mode": "docker", "docker_source": "distro"}
    spec = bundle_spec([("h1", settings)])
    assert "docker.io" in spec.os_targets[0].packages and spec.os_targets[0].key == "ubuntu-24.04-amd64"
    assert spec.images == ("debian:12-slim",)
    assert [wheel.key for wheel in spec.wheels] == ["cp311-x86_64-glibc2.36-cpu-transformers",
                                                    "cp312-x86_64-glibc2.39-cpu-light"]


@pytest.mark.parametrize("settings, message", [
    ({}, "set bundle_host_os"),
    ({"bundle_host_os": "debian-11"}, "bundle_host_os 'debian-11' on 'x86_64' is not one deepfleet supports"),
    ({"bundle_host_os": "debian-12", "bundle_host_gpu": True}, "set bundle_host_kernel"),
    ({"bundle_host_os": "debian-12", "bundle_resolver_images": {}}, "names no image for debian-12"),
])
def test_what_the_build_must_be_told_is_asked_for_by_name(settings, message):
    with pytest.raises(RoleError, match=message):
        bundle_spec([("h1", {**DEFAULTS, **settings})])


def test_time_sync_and_siem_forwarding_bring_their_packages_into_the_bundle():
    spec = bundle_spec(_hosts(siem_syslog_target="siem.hospital.internal:6514"))
    (target,) = spec.os_targets
    assert {"chrony", "rsyslog", "rsyslog-gnutls", "logrotate"} <= set(target.packages)  # ntp_servers is in its group data
    plain = {**DEFAULTS, "bundle_host_os": "debian-12"}
    assert "chrony" not in bundle_spec([("h1", plain)]).os_targets[0].packages


def test_a_rocky_host_gets_a_dnf_target_with_the_vendors_repo_files():
    settings = {**DEFAULTS, "bundle_host_os": "rocky-9", "bundle_host_gpu": True,
                "bundle_host_kernel": "5.14.0-427.13.1.el9_4.x86_64", "ntp_servers": ["ntp1"]}
    (target,) = bundle_spec([("gpu-1", settings)]).os_targets
    assert (target.key, target.family, target.resolver_image) == ("rocky-9-amd64", "rhel", "rockylinux:9")
    assert {"python3.11", "chrony", "policycoreutils-python-utils"} <= set(target.packages)
    cuda = next(source for source in target.sources if source.name == "cuda")
    assert "[deepfleet-cuda]" in cuda.apt_list and "baseurl=https://developer.download.nvidia.com/compute/cuda/" \
        "repos/rhel9/x86_64" in cuda.apt_list  # a .repo file, as the resolver's dnf reads it


def test_the_gateway_that_runs_the_fleets_limits_store_gets_its_package(tmp_path):
    fleet = tmp_path / "fleet.py"
    fleet.write_text("HOST = {'bundle_host_os': 'debian-12'}\n"
                     "gateways = [('g1', HOST), ('g2', HOST)]\ngpu_nodes = [('n1', HOST)]\n")
    (target,) = inventory_bundle_spec(load_inventory(fleet)).os_targets
    assert "redis-server" in target.packages  # g1 runs it (roles/limits_store.py: the first gateway)
    fleet.write_text("HOST = {'bundle_host_os': 'debian-12'}\ngateways = [('g1', HOST)]\ngpu_nodes = [('n1', HOST)]\n")
    (target,) = inventory_bundle_spec(load_inventory(fleet)).os_targets
    assert "redis-server" not in target.packages  # one gateway keeps its own buckets
