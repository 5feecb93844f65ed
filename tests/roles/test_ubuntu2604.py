"""Ubuntu 26.04 LTS (resolute), planned against recorded facts (no Ubuntu host here), asserted from the
vendors' published instructions and archives, not from the reviewed plans:

- Canonical's archive for resolute carries the server driver branch 595 in `restricted`
  (packages.ubuntu.com: source nvidia-graphics-drivers-595-server 595.71.05-0ubuntu0.26.04.1, binaries
  nvidia-headless-595-server[-open], nvidia-utils-595-server, linux-modules-nvidia-595-server-*); Ubuntu's
  server-driver instructions install `nvidia-headless-<branch>-server[-open]` + `nvidia-utils-<branch>-server`;
- Ubuntu 26.04's python3 is 3.14 and glibc 2.43 (ubuntu-release-notes #173, #174);
- Docker's repository has `resolute stable`; the container toolkit's apt repository is distribution-free
  (`stable/deb/$(ARCH) /`);
- NVIDIA's ubuntu2604 CUDA repository exists (NVIDIA's gpu-driver-container ubuntu26.04 image uses it), but
  it only has the 590+ package layout and its signing key file is not established here: that path is refused
  with the fix, never guessed.
"""

from __future__ import annotations

import pytest

from roles.base import base
from roles.common import RoleError
from roles.cuda import cuda
from roles.docker import docker
from roles.hostos import host_os
from roles.nvidia_container_toolkit import nvidia_container_toolkit
from roles.nvidia_driver import nvidia_driver

from .factplan import find, load_case, plan, shell_commands, with_facts

CASE = "ubuntu2604-2xh100"
DATA = {"nvidia_driver_source": "distro", "nvidia_driver_branch": "595", "cuda_source": "distro"}


def test_ubuntu_26_04_dispatches_to_resolute_and_its_python_3_14():
    found = []
    plan(load_case(CASE), lambda: found.append(host_os()))
    (os,) = found
    assert (os.family, os.codename, os.nvidia_distro, os.deb_arch) == ("debian", "resolute", "ubuntu2604", "amd64")
    assert (os.python.command, os.python.version, os.python.glibc) == ("python3", "3.14", "2.43")
    install = next(command for command in shell_commands(plan(load_case(CASE), base)) if "apt-get" in command and
                   "install" in command)
    assert "python3-venv" in install.split()  # python3 itself is installed already (the case's DebPackages)


def test_canonicals_595_server_driver_with_open_modules_is_installed_and_held():
    commands = shell_commands(plan(load_case(CASE), nvidia_driver, data=DATA))
    install = next(command for command in commands if "apt-get" in command and "nvidia-headless" in command).split()
    assert {"linux-headers-7.0.0-15-generic", "nvidia-headless-595-server-open", "nvidia-utils-595-server"} <= set(install)
    assert "apt-mark hold nvidia-headless-595-server-open nvidia-utils-595-server" in commands
    assert not [command for command in commands if "developer.download.nvidia.com" in command]  # Ubuntu's archive only


def test_secure_boot_takes_canonicals_signed_595_server_modules():
    facts = with_facts(load_case(CASE), **{"roles.driver_reboot.SecureBoot": {"$output": ["SecureBoot enabled"]}})
    commands = shell_commands(plan(facts, nvidia_driver, data=DATA))
    install = next(command for command in commands if "apt-get" in command and "linux-modules-nvidia" in command).split()
    assert {"linux-modules-nvidia-595-server-open-7.0.0-15-generic", "nvidia-headless-no-dkms-595-server-open"} <= set(install)


@pytest.mark.parametrize(("role", "data"), [
    (nvidia_driver, {"nvidia_driver_branch": "595"}),  # nvidia_driver_source cuda_repo (the default)
    (cuda, {"nvidia_driver_source": "distro", "nvidia_driver_branch": "595"}),  # cuda_source cuda_repo (the default)
])
def test_nvidias_ubuntu2604_repository_is_refused_naming_the_distro_settings(role, data):
    with pytest.raises(RoleError, match=r"ubuntu2604.*nvidia_driver_source: distro.*cuda_source: distro"):
        plan(load_case(CASE), role, data=data)


def test_the_cuda_toolkit_comes_from_ubuntus_archive():
    commands = shell_commands(plan(load_case(CASE), cuda, data=DATA))
    assert any("nvidia-cuda-toolkit" in command.split() for command in commands if "apt-get" in command)


def test_docker_uses_its_resolute_repository_and_the_toolkit_its_distribution_free_one():
    docker_list = [content for op in plan(load_case(CASE), docker) for path, content in op.uploads().items()
                   if path.startswith("/etc/apt/sources.list.d/")]
    assert any("https://download.docker.com/linux/ubuntu resolute stable" in content for content in docker_list)
    toolkit_list = [content for op in plan(load_case(CASE), nvidia_container_toolkit)
                    for path, content in op.uploads().items() if path.startswith("/etc/apt/sources.list.d/")]
    assert any("https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /" in content for content in toolkit_list)


def test_the_stock_deb822_ubuntu_sources_are_not_rewritten():
    ops = [op for role in (base, nvidia_driver, cuda, docker, nvidia_container_toolkit)
           for op in plan(load_case(CASE), role, data=DATA)]
    assert not [path for op in ops for path in op.uploads() if path == "/etc/apt/sources.list.d/ubuntu.sources"]
    assert find(plan(load_case(CASE), docker), "Docker CE repository: apt source").change == "yes"
