"""Wheelhouses: everything `deepfleet-runtime` needs on a host, as wheels built on the control machine.

Hosts never reach a package index: the control machine downloads binary wheels for the host's
Python and platform (taken from facts), pinned by runtime/constraints.txt, and the runtime role
pushes them and installs with `pip --no-index`. The same mechanism serves air-gapped installs.

A wheelhouse has two parts, cached separately so that a change to the runtime's code re-pushes
one small wheel, not the 250 MB of dependencies:
    deps-<digest>/     third-party wheels for one target platform (+ .manifest.json)
    runtime-<digest>/  the deepfleet-runtime wheel built from runtime/ (digest of its sources)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .atomicfile import write_atomic
from .digests import sha256_file
from .filelock import exclusive_lock

MANIFEST = ".manifest.json"
RUNTIME_DIST = "deepfleet_runtime"
# Wheels built from source carry this timestamp, so the same sources give the same bytes.
SOURCE_DATE_EPOCH = "315532800"


class WheelhouseError(RuntimeError):
    """Wheels could not be built or downloaded; the message carries pip's reason."""


@dataclass(frozen=True)
class TargetPlatform:
    """The host's Python and platform, as pip's --platform/--python-version understand them."""

    python: str  # "3.11"
    machine: str  # "x86_64", "aarch64"
    glibc: str  # "2.36"

    def pip_args(self) -> list[str]:
        major, minor = (int(part) for part in self.glibc.split(".")[:2])
        platforms = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        platforms += [f"manylinux2014_{self.machine}", f"linux_{self.machine}"]
        abi = "cp" + self.python.replace(".", "")
        args = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp",
                "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for platform in platforms:
            args += ["--platform", platform]
        return args


@dataclass(frozen=True)
class Wheelhouse:
    deps_dir: Path
    deps_digest: str
    runtime_wheel: Path
    runtime_digest: str
    requirement: str  # what pip installs from the deps, e.g. "deepfleet-runtime[transformers]"

    @property
    def install_id(self) -> str:
        """Identifies exactly what a host's venv should hold."""
        return f"{self.deps_digest}-{self.runtime_digest}"


def build_wheelhouse(target: TargetPlatform, cache_dir: Path, runtime_src: Path,
                     extras: tuple[str, ...] = ("transformers",), log=logging.getLogger(__name__).info
                     ) -> Wheelhouse:
    """The wheelhouse for `target`, from the cache when nothing that defines it changed."""
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache_dir / ".lock"):  # hosts of one deploy may ask concurrently
        wheel, runtime_digest = _runtime_wheel(Path(runtime_src), cache_dir, log)
        requirement = f"deepfleet-runtime[{','.join(extras)}]" if extras else "deepfleet-runtime"
        deps_dir, deps_digest = _dependency_wheels(target, wheel, requirement, Path(runtime_src),
                                                   cache_dir, log)
    return Wheelhouse(deps_dir, deps_digest, wheel, runtime_digest, requirement)


def tree_digest(root: Path) -> str:
    """SHA-256 over the relative paths and contents of the source files under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_dir() or "__pycache__" in relative or ".egg-info" in relative or relative.startswith("build/"):
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def file_manifest(directory: Path) -> dict[str, str]:
    """{file name: sha256} of the wheels in `directory`."""
    return {path.name: sha256_file(path) for path in sorted(directory.glob("*.whl"))}


def _runtime_wheel(runtime_src: Path, cache_dir: Path, log) -> tuple[Path, str]:
    digest = tree_digest(runtime_src)[:16]
    target = cache_dir / f"runtime-{digest}"
    if not target.exists():
        log(f"building the deepfleet-runtime wheel from {runtime_src}")
        scratch = tempfile.mkdtemp(dir=cache_dir, prefix=".runtime-")
        try:
            _pip(["wheel", "--no-deps", "--wheel-dir", scratch, str(runtime_src.resolve())],
                 "building the deepfleet-runtime wheel")
            os.rename(scratch, target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    (wheel,) = target.glob(f"{RUNTIME_DIST}-*.whl")
    return wheel, digest


def _dependency_wheels(target: TargetPlatform, runtime_wheel: Path, requirement: str, runtime_src: Path,
                       cache_dir: Path, log) -> tuple[Path, str]:
    constraints = runtime_src / "constraints.txt"
    key_material = json.dumps({
        "target": [target.python, target.machine, target.glibc],
        "requirement": requirement,
        "constraints": constraints.read_text() if constraints.exists() else "",
        "pyproject": (runtime_src / "pyproject.toml").read_text(),
    }, sort_keys=True)
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    final = cache_dir / f"deps-{key}"
    if not (final / MANIFEST).exists():
        log(f"downloading runtime dependencies for Python {target.python} on {target.machine}")
        scratch = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".deps-"))
        try:
            extras = requirement[len("deepfleet-runtime"):]
            args = ["download", "--dest", str(scratch), *target.pip_args(), f"{runtime_wheel}{extras}"]
            if constraints.exists():
                args += ["--constraint", str(constraints)]
            _pip(args, f"downloading wheels for Python {target.python} on {target.machine}")
            for copy in scratch.glob(f"{RUNTIME_DIST}-*.whl"):
                copy.unlink()
            manifest = file_manifest(scratch)
            write_atomic(scratch / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(scratch, final)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    manifest_bytes = (final / MANIFEST).read_bytes()
    return final, hashlib.sha256(manifest_bytes).hexdigest()[:16]


def _pip(args: list[str], what: str) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet"], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-12:])
        raise WheelhouseError(f"{what} failed:\n{tail}")
