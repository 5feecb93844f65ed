"""Repositories and packages: one base URL per repository, signed-by keyrings, installs of what is missing."""

from __future__ import annotations

import pytest

from roles.docker import docker
from roles.nvidia_container_toolkit import nvidia_container_toolkit
from roles.nvidia_driver import nvidia_driver
from roles.packages import missing_packages

from .factplan import find, load_case, plan, with_facts

MIRROR = "http://mirror.example.internal/repo/"


@pytest.mark.parametrize(("role", "case", "setting", "default_host", "files"), [
    (nvidia_driver, "ubuntu2204-2xa100", "cuda_repo_base_url", "developer.download.nvidia.com", {
        "/etc/apt/sources.list.d/deepfleet-cuda.list":
            f"deb [arch=amd64 signed-by=/etc/apt/keyrings/deepfleet-cuda.asc] {MIRROR}ubuntu2204/x86_64/ /\n"}),
    (nvidia_container_toolkit, "ubuntu2404-rtx4090", "nvidia_container_toolkit_repo_base_url",
     "nvidia.github.io", {
        "/etc/apt/sources.list.d/deepfleet-nvidia-container-toolkit.list":
            f"deb [arch=amd64 signed-by=/etc/apt/keyrings/deepfleet-nvidia-container-toolkit.asc] "
            f"{MIRROR}stable/deb/amd64 /\n"}),
    (docker, "rocky9-8xh100", "docker_repo_base_url", "download.docker.com", {
        "/etc/yum.repos.d/deepfleet-docker.repo": f"baseurl={MIRROR}centos/$releasever/$basearch/stable\n"
                                                  f"enabled=1\ngpgcheck=1\ngpgkey={MIRROR}centos/gpg\n"}),
])
def test_a_mirror_is_one_setting_for_every_url_of_its_repository(role, case, setting, default_host, files):
    ops = plan(load_case(case), role, data={setting: MIRROR})
    uploads = {path: text for op in ops for path, text in op.uploads().items()}
    for path, ending in files.items():
        assert uploads[path].endswith(ending)
    assert default_host not in repr([op.commands for op in ops])


def test_keys_come_from_the_mirror_and_are_fetched_only_once():
    key_op = "NVIDIA CUDA repository: signing key"
    fresh = find(plan(load_case("ubuntu2204-2xa100"), nvidia_driver, data={"cuda_repo_base_url": MIRROR}), key_op)
    assert f"{MIRROR}ubuntu2204/x86_64/3bf863cc.pub /etc/apt/keyrings/deepfleet-cuda.asc.deepfleet-partial" in (
        fresh.shell()[1])
    present = with_facts(load_case("ubuntu2204-2xa100"), **{"files.File": {
        "path=/etc/apt/keyrings/deepfleet-cuda.asc": {"user": "root", "group": "root", "mode": 644}, "*": None}})
    again = find(plan(present, nvidia_driver), key_op)
    assert (again.change, again.notes) == ("no", ["/etc/apt/keyrings/deepfleet-cuda.asc already exists"])


@pytest.mark.parametrize(("packages", "installed", "missing"), [
    (["a", "b"], {"a": ["1"]}, ["b"]),
    (["a=2-1"], {"a": ["1-1"]}, ["a=2-1"]),  # a pinned version that is not the installed one
    (["a=2-1", "b"], {"a": ["2-1"], "b": ["7"]}, []),
])
def test_missing_packages_respect_pins(packages, installed, missing):
    assert missing_packages(packages, installed) == missing
