"""The CUDA toolkit role per OS x GPU case, planned against recorded facts; its profile.d script run."""

from __future__ import annotations

import subprocess

import pytest

from roles.common import RoleError
from roles.cuda import cuda

from .factplan import changed, expect_plan, find, load_case, plan

CASES = {
    "ubuntu2204-2xa100": {},
    "ubuntu2404-rtx4090": {"nvidia_driver_source": "distro"},  # so this role adds the CUDA repository itself
    "rocky9-8xh100": {},
    "ubuntu2604-2xh100": {"nvidia_driver_source": "distro", "nvidia_driver_branch": "595", "cuda_source": "distro"},  # Ubuntu's nvidia-cuda-toolkit
    "rocky10-8xh100": {"nvidia_driver_branch": "580", "cuda_version": "13.0"},  # NVIDIA's rhel10 repository
    "debian12-nogpu": {},
    "debian12-arm64-edge": {},
}
PROFILE = "/etc/profile.d/deepfleet-cuda.sh"


@pytest.mark.parametrize("case", CASES)
def test_plan_is_the_reviewed_plan(case):
    expect_plan(plan(load_case(case), cuda, data=CASES[case]), f"cuda/{case}")


def test_the_repository_is_added_by_the_driver_role_when_it_uses_it():
    with_driver_repo = plan(load_case("ubuntu2204-2xa100"), cuda)
    own_repo = plan(load_case("ubuntu2204-2xa100"), cuda, data={"nvidia_driver_source": "distro"})
    assert not [op for op in with_driver_repo if "CUDA repository" in op.name]
    assert [op.name for op in own_repo if "CUDA repository" in op.name] == [
        "CUDA toolkit | NVIDIA CUDA repository: signing key", "CUDA toolkit | NVIDIA CUDA repository: apt source"]


def test_pinned_version_names_the_package_and_the_path():
    ops = plan(load_case("rocky9-8xh100"), cuda, data={"cuda_version": "12.6"})
    assert find(ops, "CUDA toolkit 12.6: packages").shell() == ["dnf install -y cuda-toolkit-12-6"]
    assert "export CUDA_HOME=/usr/local/cuda-12.6\n" in find(ops, "on PATH for login shells").uploads()[PROFILE]


@pytest.mark.parametrize("version", ["12", "12.8.1", "latest"])
def test_a_cuda_version_that_is_not_major_minor_is_refused(version):
    with pytest.raises(RoleError, match="cuda_version .* major.minor"):
        plan(load_case("ubuntu2204-2xa100"), cuda, data={"cuda_version": version})


def test_driver_only_hosts_skip_the_toolkit():
    ops = plan(load_case("ubuntu2204-2xa100"), cuda, data={"cuda_toolkit_install": False})
    assert changed(ops) == [] and "cuda_toolkit_install is false" in ops[0].notes[0]


def test_distro_toolkit_on_ubuntu_and_refused_on_rocky():
    ops = plan(load_case("ubuntu2404-rtx4090"), cuda, data={"cuda_source": "distro"})
    assert find(ops, ": packages").shell()[-1].endswith("install --no-install-recommends nvidia-cuda-toolkit")
    assert not [op for op in ops if "PATH" in op.name]
    with pytest.raises(RoleError, match="not available on rocky 9.4"):
        plan(load_case("rocky9-8xh100"), cuda, data={"cuda_source": "distro"})


def test_profile_script_puts_cuda_first_on_path_once(tmp_path):
    script = find(plan(load_case("ubuntu2204-2xa100"), cuda), "on PATH for login shells").uploads()[PROFILE]
    (tmp_path / "cuda.sh").write_text(script)
    out = subprocess.run(["sh", "-c", f". {tmp_path}/cuda.sh; . {tmp_path}/cuda.sh; echo $PATH; echo $LD_LIBRARY_PATH"],
                         env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["/usr/local/cuda-12.8/bin:/usr/bin:/bin", "/usr/local/cuda-12.8/lib64"]
