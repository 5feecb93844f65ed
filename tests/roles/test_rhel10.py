"""Rocky / RHEL 10, planned against recorded facts (no Rocky 10 host here), asserted from the vendors'
published instructions, not from the reviewed plans:

- NVIDIA's driver installation guide, "Kernel Modules" (RHEL 10 / Rocky 10 / AlmaLinux 10 rows): no
  dnf module streams; a branch is chosen with `dnf versionlock *nvidia*<branch>*` and then
  `dnf install nvidia-open` (proprietary: `cuda-drivers`, "Switching between Driver Module Flavors");
- NVIDIA's repository `compute/cuda/repos/rhel10/<arch>/` (its `cuda-rhel10.repo` names
  `gpgkey=.../rhel10/x86_64/CDF6BA43.pub`); CRB and EPEL 10 as its pre-installation actions ask;
- Fabric Manager where no `/fm` profile exists: `dnf install nvidia-fabric-manager` (NVIDIA's cloud-native docs);
- Docker's `<base>/<centos|rhel>/$releasever/$basearch/stable` and the toolkit's `stable/rpm/$basearch`.
"""

from __future__ import annotations

import pytest

from roles.cuda import cuda
from roles.docker import docker
from roles.hostos import host_os
from roles.nvidia_container_toolkit import nvidia_container_toolkit
from roles.nvidia_driver import nvidia_driver

from .factplan import find, load_case, plan, shell_commands, with_facts

CASE = "rocky10-8xh100"
DATA = {"nvidia_driver_branch": "580", "cuda_version": "13.0"}
RHEL = {"$output": ["/etc/os-release", 'NAME="Red Hat Enterprise Linux"', 'ID="rhel"', 'VERSION_ID="10.1"',
                    'PLATFORM_ID="platform:el10"', "---"]}


def test_rocky_10_dispatches_to_the_rhel10_repository_and_its_python():
    found = []
    plan(load_case(CASE), lambda: found.append(host_os()))
    (os,) = found
    assert (os.family, os.nvidia_distro, os.nvidia_arch) == ("rhel", "rhel10", "x86_64")
    assert (os.python.command, os.python.version) == ("python3", "3.12")  # RHEL 10's own python3


def test_the_driver_comes_from_nvidias_rhel10_repository_with_its_key():
    ops = plan(load_case(CASE), nvidia_driver, data=DATA)
    repo = next(content for op in ops for path, content in op.uploads().items() if path.startswith("/etc/yum.repos.d/"))
    assert "baseurl=https://developer.download.nvidia.com/compute/cuda/repos/rhel10/x86_64" in repo.splitlines()
    assert "gpgkey=https://developer.download.nvidia.com/compute/cuda/repos/rhel10/x86_64/CDF6BA43.pub" in repo.splitlines()
    assert "gpgcheck=1" in repo.splitlines()


def test_the_branch_is_version_locked_before_nvidia_open_is_installed_without_module_streams():
    commands = shell_commands(plan(load_case(CASE), nvidia_driver, data=DATA))
    assert not [command for command in commands if command.startswith("dnf") and " module " in command]  # no streams
    lock = commands.index("dnf versionlock add '*nvidia*580*'")
    install = next(i for i, command in enumerate(commands) if command.startswith("dnf install") and "nvidia-open" in command)
    assert lock < install  # NVIDIA: `dnf versionlock *nvidia*580*`, then `dnf install nvidia-open`
    assert "python3-dnf-plugin-versionlock" in commands[lock - 1]
    packages = commands[install].split()
    assert {"nvidia-open", "nvidia-fabric-manager"} <= set(packages) and "cuda-drivers" not in packages
    # before it, in its own transaction: headers of the running kernel (never kernel-devel-matched, which pulls
    # the newest kernel) and EPEL, whose dkms nvidia-open's DKMS package needs (it cannot come from a repository
    # that the same transaction installs)
    first = next(i for i, command in enumerate(commands) if command.startswith("dnf install") and "epel-release" in command)
    assert first < install and "epel-release" not in packages
    assert {"kernel-devel-6.12.0-124.8.1.el10_1", "kernel-headers-6.12.0-124.8.1.el10_1"} <= set(commands[first].split())
    assert not [command for command in commands if "kernel-devel-matched" in command]


def test_proprietary_modules_install_cuda_drivers_instead():
    commands = shell_commands(plan(load_case(CASE), nvidia_driver, data={**DATA, "nvidia_driver_open_kernel_modules": False}))
    install = next(command for command in commands if command.startswith("dnf install") and "cuda-drivers" in command)
    assert "nvidia-open" not in install.split()


def test_crb_is_enabled_on_rocky_and_through_subscription_manager_on_rhel_10():
    assert find(plan(load_case(CASE), nvidia_driver, data=DATA), "CodeReady Builder").shell() == [
        "dnf config-manager --set-enabled crb"]
    rhel = plan(with_facts(load_case(CASE), **{"server.LinuxDistribution": RHEL}), nvidia_driver, data=DATA)
    assert find(rhel, "CodeReady Builder").shell() == [
        "subscription-manager repos --enable codeready-builder-for-rhel-10-x86_64-rpms"]
    assert not [command for command in shell_commands(rhel) if "epel-release" in command]  # RHEL: EPEL is the owner's


def test_fabric_manager_runs_on_the_nvswitch_board():
    ops = plan(load_case(CASE), nvidia_driver, data=DATA)
    assert find(ops, "NVIDIA Fabric Manager for 4 NVSwitches").change == "yes"


def test_cuda_docker_and_the_toolkit_use_their_el10_repositories():
    toolkit = plan(load_case(CASE), cuda, data=DATA)
    assert "cuda-toolkit-13-0" in find(toolkit, ": packages").shell()[-1].split()
    docker_repo = next(content for op in plan(load_case(CASE), docker) for path, content in op.uploads().items()
                       if path.startswith("/etc/yum.repos.d/"))
    assert "baseurl=https://download.docker.com/linux/centos/$releasever/$basearch/stable" in docker_repo.splitlines()
    ctk_repo = next(content for op in plan(load_case(CASE), nvidia_container_toolkit)
                    for path, content in op.uploads().items() if path.startswith("/etc/yum.repos.d/"))
    assert "baseurl=https://nvidia.github.io/libnvidia-container/stable/rpm/$basearch" in ctk_repo.splitlines()


@pytest.mark.parametrize("version", ["8.10", "11.0"])
def test_other_rhel_majors_are_still_refused(version):
    from roles.common import RoleError
    release = {"$output": ["/etc/os-release", "ID=rocky", f'VERSION_ID="{version}"', "---"]}
    with pytest.raises(RoleError, match="rocky 9, rhel 9, almalinux 9, rocky 10, rhel 10, almalinux 10"):
        plan(with_facts(load_case(CASE), **{"server.LinuxDistribution": release}), nvidia_driver)
