"""OS dispatch from facts: the parsed os-release and uname of each case, and OSes that are refused."""

from __future__ import annotations

import pytest

from roles.common import RoleError
from roles.hostos import host_os
from roles.nvidia_driver import nvidia_driver

from .factplan import find, load_case, plan, with_facts


def _os(facts):
    found = []
    plan(facts, lambda: found.append(host_os()))
    return found[0]


@pytest.mark.parametrize(("case", "family", "nvidia_distro", "nvidia_arch", "deb_arch", "codename"), [
    ("ubuntu2204-2xa100", "debian", "ubuntu2204", "x86_64", "amd64", "jammy"),
    ("ubuntu2404-rtx4090", "debian", "ubuntu2404", "x86_64", "amd64", "noble"),
    ("rocky9-8xh100", "rhel", "rhel9", "x86_64", "amd64", ""),
    ("rocky10-8xh100", "rhel", "rhel10", "x86_64", "amd64", ""),
    ("ubuntu2604-2xh100", "debian", "ubuntu2604", "x86_64", "amd64", "resolute"),
    ("debian12-nogpu", "debian", "debian12", "x86_64", "amd64", "bookworm"),
    ("debian12-arm64-edge", "debian", "debian12", "sbsa", "arm64", "bookworm"),
])
def test_each_case_dispatches_to_its_family_and_vendor_layout(case, family, nvidia_distro, nvidia_arch, deb_arch,
                                                              codename):
    os = _os(load_case(case))
    assert (os.family, os.nvidia_distro, os.nvidia_arch, os.deb_arch, os.codename) == (
        family, nvidia_distro, nvidia_arch, deb_arch, codename)


def test_an_unsupported_os_is_refused_with_the_supported_list():
    facts = with_facts(load_case("ubuntu2204-2xa100"), **{"server.LinuxDistribution": {"$output": [
        "/etc/os-release", 'NAME="Ubuntu"', 'VERSION_ID="20.04"', "ID=ubuntu", "VERSION_CODENAME=focal", "---"]}})
    with pytest.raises(RoleError, match="runs ubuntu 20.04; deepfleet's roles support ubuntu 22, ubuntu 24, ubuntu 26, debian 12"):
        _os(facts)


def test_an_unsupported_architecture_is_refused():
    with pytest.raises(RoleError, match="architecture 'ppc64le'"):
        _os(with_facts(load_case("debian12-nogpu"), **{"server.Arch": "ppc64le"}))


def test_debian_13_gets_nvidias_debian13_repository_with_its_new_key_and_trixies_driver():
    ops = plan(load_case("debian13-2xa100-stock"), nvidia_driver)
    assert any(arg.endswith("/compute/cuda/repos/debian13/x86_64/8793F200.pub")  # NVIDIA's trixie key, which sqv accepts
               for arg in find(ops, "signing key").shell()[1].split())
    assert find(ops, "contrib added to /etc/apt/sources.list.d/debian.sources").change == "yes"
    distro = plan(load_case("debian13-2xa100-stock"), nvidia_driver,
                  data={"nvidia_driver_source": "distro", "nvidia_driver_branch": "550"})
    assert "nvidia-driver" in find(distro, ": packages").shell()[-1]


@pytest.mark.parametrize(("os_id", "version"), [("debian", "11"), ("rocky", "8.10"), ("ubuntu", "25.10")])
def test_releases_not_supported_are_refused_naming_the_supported_ones(os_id, version):
    # Ubuntu 26.04 and Rocky/RHEL 10 are supported (test_ubuntu2604.py, test_rhel10.py)
    release = {"$output": ["/etc/os-release", f"ID={os_id}", f'VERSION_ID="{version}"', "---"]}
    with pytest.raises(RoleError, match=r"support ubuntu 22, ubuntu 24, ubuntu 26, debian 12, debian 13, rocky 9.*rocky 10"):
        plan(with_facts(load_case("ubuntu2204-2xa100"), **{"server.LinuxDistribution": release}), nvidia_driver)
