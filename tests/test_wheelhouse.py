"""Wheelhouse targets, constraints, pip arguments, digests; a real llamacpp build from source
(the real builds for hosts and their push run in the fleet tests)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from deepfleet.paths import PROJECT_ROOT
from deepfleet.wheelhouse import (MANIFEST, TargetPlatform, WheelhouseError, explain_missing_wheel, build_wheelhouse,
                                  constraints_file, control_platform, dependency_pip_args, tree_digest)

RUNTIME = PROJECT_ROOT / "runtime"


def test_platform_tags_cover_every_manylinux_up_to_the_hosts_glibc():
    args = TargetPlatform("3.11", "aarch64", "2.36").pip_args()
    platforms = [args[i + 1] for i, arg in enumerate(args) if arg == "--platform"]
    assert platforms[0] == "manylinux_2_36_aarch64"
    assert "manylinux_2_17_aarch64" in platforms and "manylinux2014_aarch64" in platforms
    assert "manylinux_2_37_aarch64" not in platforms
    assert not any("x86_64" in p for p in platforms)
    assert args[args.index("--python-version") + 1] == "3.11"
    assert "cp311" in args and "--only-binary=:all:" in args


def test_tree_digest_follows_content_not_caches(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    first = tree_digest(tmp_path)
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"junk")
    assert tree_digest(tmp_path) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert tree_digest(tmp_path) != first


BUILDER = TargetPlatform("3.11", "x86_64", "2.36")
# What pip 26 prints when a constrained package has no wheel for the target (captured from a real
# `pip download --only-binary=:all:` of deepfleet-runtime[llamacpp] for aarch64).
PIP_NO_WHEEL = """downloading wheels for Python 3.11 on aarch64 (glibc 2.36) failed:
The conflict is caused by:
    deepfleet-runtime[llamacpp] 0.1.0 depends on llama-cpp-python<0.4 and >=0.3.36; extra == "llamacpp"
    The user requested (constraint) llama-cpp-python==0.3.36
Additionally, some packages in these conflicts have no matching distributions available for your environment:
    llama-cpp-python
ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/"""


def _pins(path: Path) -> dict[str, Requirement]:
    requirements = (Requirement(line) for line in path.read_text().splitlines() if line and line[0].isalnum())
    return {requirement.name: requirement for requirement in requirements}


def test_cpu_and_cuda_targets_get_their_own_torch_over_the_shared_pins():
    shared = _pins(RUNTIME / "constraints.txt")
    cpu, cuda = (constraints_file(RUNTIME, accelerator) for accelerator in ("cpu", "cuda"))
    cpu_torch, cuda_torch = _pins(cpu)["torch"].specifier, _pins(cuda)["torch"].specifier
    assert cpu_torch.contains("2.13.0+cpu") and not cpu_torch.contains("2.13.0")
    # PyPI's Linux torch is the CUDA build; a CPU build from an extra index must not satisfy the pin.
    assert cuda_torch.contains("2.13.0") and not cuda_torch.contains("2.13.0+cpu")
    assert "vllm" in _pins(cuda) and "vllm" not in _pins(cpu)
    for path in (cpu, cuda):
        assert "-c constraints.txt" in path.read_text().splitlines()
        assert not set(_pins(path)) & set(shared)  # each version is decided in one file
    assert "torch" not in shared
    with pytest.raises(WheelhouseError, match="use one of cpu, cuda"):
        constraints_file(RUNTIME, "rocm")


@pytest.mark.parametrize(("target", "command"), [
    (BUILDER, "wheel"),
    (TargetPlatform("3.11", "x86_64", "2.39"), "wheel"),  # a newer glibc runs what 2.36 built
    (TargetPlatform("3.11", "x86_64", "2.35"), "download"),
    (TargetPlatform("3.12", "x86_64", "2.36"), "download"),
    (TargetPlatform("3.11", "aarch64", "2.36"), "download"),
])
def test_only_targets_that_run_this_machines_builds_get_wheels_built_from_source(target, command):
    args = dependency_pip_args(target, "rt.whl[llamacpp]", Path("c.txt"), Path("out"), BUILDER)
    assert args[0] == command
    assert ("--only-binary=:all:" in args) == (command == "download")
    assert args[args.index("--constraint") + 1] == "c.txt" and "rt.whl[llamacpp]" in args


def test_a_package_without_a_wheel_for_the_target_names_the_fixes():
    same_arch = explain_missing_wheel(WheelhouseError(PIP_NO_WHEEL), TargetPlatform("3.12", "x86_64", "2.39"), BUILDER)
    assert str(same_arch).startswith("llama-cpp-python has no binary wheel for Python 3.12 on x86_64 (glibc 2.39)")
    assert "run the deploy from a machine of the host's platform" in str(same_arch)
    assert "runtime_mode: docker" in str(same_arch)
    other_arch = explain_missing_wheel(WheelhouseError(PIP_NO_WHEEL), TargetPlatform("3.11", "aarch64", "2.36"),
                                        BUILDER)
    assert "runtime_mode: docker" not in str(other_arch)  # an image built here would be x86_64 too
    assert "leave the extra that needs it out of runtime_wheel_extras" in str(other_arch)
    unrelated = WheelhouseError("downloading failed: connection refused")
    assert explain_missing_wheel(unrelated, TargetPlatform("3.12", "x86_64", "2.39"), BUILDER) is unrelated


def test_a_llamacpp_wheelhouse_for_this_machine_builds_llama_cpp_python_from_its_sdist(tmp_path):
    """Real pip, real sdist: about 5 s with llama-cpp-python's wheel in pip's cache (`make setup` puts it
    there), about 7 minutes without."""
    wheelhouse = build_wheelhouse(control_platform(), tmp_path / "cache", RUNTIME, extras=("llamacpp",))
    wheels = json.loads((wheelhouse.deps_dir / MANIFEST).read_text())
    assert [name for name in wheels if name.startswith("llama_cpp_python-0.3.36-")] == [
        f"llama_cpp_python-0.3.36-py3-none-linux_{platform.machine()}.whl"]
    # Complete for an offline host: pip resolves the extra from these wheels alone.
    offline = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
                              "--find-links", str(wheelhouse.deps_dir), "--target", str(tmp_path / "t"),
                              f"{wheelhouse.runtime_wheel}[llamacpp]"], capture_output=True, text=True)
    assert offline.returncode == 0, offline.stderr[-2000:]
