"""Wheelhouses: everything `deepfleet-runtime` needs on a host, as wheels built on the control machine.

Hosts never reach a package index: the control machine fetches wheels for the host's Python and
platform (taken from facts), pinned by the constraints of the host's accelerator
(runtime/constraints-cpu.txt or runtime/constraints-cuda.txt), and the runtime role pushes them and
installs with `pip --no-index`. The same mechanism serves air-gapped installs.

Wheels for another platform can only be downloaded (`pip download --only-binary=:all:`). Packages
that ship only as source (llama-cpp-python) are built into wheels (`pip wheel`), which is possible
only when the target runs what this machine builds: the same Python and architecture, and a glibc
at least as new as this machine's. Otherwise the build stops with an error naming the fixes.

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
import platform
import re
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
ACCELERATORS = ("cpu", "cuda")  # each has runtime/constraints-<accelerator>.txt
# How pip says a package has no wheel for the target (a plain requirement; a constrained one).
_NO_WHEEL = re.compile(r"No matching distribution found for ([\w.\-]+)"
                       r"|no matching distributions available for your environment:\s+([\w.\-]+)")
RUNTIME_DIST = "deepfleet_runtime"
# Wheels built from source carry this timestamp, so the same sources give the same bytes.
SOURCE_DATE_EPOCH = "315532800"


class WheelhouseError(RuntimeError):
    """Wheels could not be built or downloaded; the message carries pip's reason."""


@dataclass(frozen=True)
class TargetPlatform:
    """The host's Python and platform, as pip's --platform/--python-version understand them, and
    the accelerator its torch is built for."""

    python: str  # "3.11"
    machine: str  # "x86_64", "aarch64"
    glibc: str  # "2.36"
    accelerator: str = "cpu"  # "cpu" | "cuda": selects runtime/constraints-<accelerator>.txt

    def pip_args(self) -> list[str]:
        """`pip download` arguments that select binary wheels for this platform."""
        major, minor = (int(part) for part in self.glibc.split(".")[:2])
        platforms = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        platforms += [f"manylinux2014_{self.machine}", f"linux_{self.machine}"]
        abi = "cp" + self.python.replace(".", "")
        args = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp",
                "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for platform_tag in platforms:
            args += ["--platform", platform_tag]
        return args

    def runs_wheels_built_on(self, builder: TargetPlatform) -> bool:
        """Whether wheels compiled on `builder` run here: same Python and architecture, and a glibc
        at least as new as the builder's (what a locally built wheel links against)."""
        return (self.python, self.machine) == (builder.python, builder.machine) and \
            _version(self.glibc) >= _version(builder.glibc)

    def label(self) -> str:
        return f"Python {self.python} on {self.machine} (glibc {self.glibc})"


def control_platform() -> TargetPlatform:
    """This machine's Python (the one that runs the deploy, and pip) and platform."""
    return TargetPlatform("%d.%d" % sys.version_info[:2], platform.machine(), platform.libc_ver()[1])


def constraints_file(runtime_src: Path, accelerator: str) -> Path:
    """runtime/constraints-<accelerator>.txt: the exact versions hosts with that accelerator get."""
    if accelerator not in ACCELERATORS:
        raise WheelhouseError(f"no constraints for accelerator {accelerator!r}; use one of {', '.join(ACCELERATORS)}")
    return Path(runtime_src) / f"constraints-{accelerator}.txt"


def dependency_pip_args(target: TargetPlatform, requirement: str, constraints: Path, dest: Path,
                        builder: TargetPlatform) -> list[str]:
    """The pip command (after `pip`) that puts the wheels of `requirement` for `target` into `dest`:
    `pip wheel` (binary wheels, and wheels built from source where a package has none) when
    `target` runs what `builder` (this machine) compiles, else `pip download` of binary wheels only."""
    if target.runs_wheels_built_on(builder):
        return ["wheel", "--wheel-dir", str(dest), requirement, "--constraint", str(constraints)]
    return ["download", "--dest", str(dest), *target.pip_args(), requirement, "--constraint", str(constraints)]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


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


def recorded_hashes(wheelhouse: Wheelhouse) -> tuple[dict[str, str], str]:
    """The SHA-256 of the wheelhouse's dependency wheels ({file name: digest}), as recorded where
    it was built, and of its runtime wheel."""
    return json.loads((wheelhouse.deps_dir / MANIFEST).read_text()), sha256_file(wheelhouse.runtime_wheel)


def hashed_requirements(deps: dict[str, str], runtime_wheel: str, runtime_sha256: str,
                        extras: list[str] | tuple[str, ...] = ()) -> tuple[str, str]:
    """Requirements files that put a host's pip in hash-checking mode (`--require-hashes`): every
    dependency wheel (`deps`: {file name: sha256}) pinned `name==version` to its hash, and the
    runtime wheel (its path on the host) to `runtime_sha256`. pip then installs nothing else, and
    refuses a wheel whose bytes differ, naming the expected and the found hash. Returns (the full
    install, the runtime wheel alone for the --no-deps reinstall).

    Hashes go in a requirements file, not a constraints file: pip (checked with 26.3) does not count
    a constraint's hash as pinning a dependency in --require-hashes mode."""
    requirement = f"{runtime_wheel}[{','.join(extras)}]" if extras else runtime_wheel
    lines = [f"{requirement} --hash=sha256:{runtime_sha256}"]
    for name, digest in sorted(deps.items()):
        project, version = name.split("-")[:2]
        lines.append(f"{project}=={version} --hash=sha256:{digest}")
    return "\n".join(lines) + "\n", f"{runtime_wheel} --hash=sha256:{runtime_sha256}\n"


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
    constraints = constraints_file(runtime_src, target.accelerator)
    builder = control_platform()
    key_material = json.dumps({
        "target": [target.python, target.machine, target.glibc, target.accelerator],
        "requirement": requirement,
        # the selected file and the shared pins it includes (-c constraints.txt)
        "constraints": [path.read_text() for path in sorted(runtime_src.glob("constraints*.txt"))],
        "pyproject": (runtime_src / "pyproject.toml").read_text(),
        "built_here": target.runs_wheels_built_on(builder),
    }, sort_keys=True)
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    final = cache_dir / f"deps-{key}"
    if not (final / MANIFEST).exists():
        log(f"fetching runtime dependencies for {target.label()}, {target.accelerator}")
        scratch = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".deps-"))
        try:
            extras = requirement[len("deepfleet-runtime"):]
            args = dependency_pip_args(target, f"{runtime_wheel}{extras}", constraints, scratch, builder)
            try:
                _pip(args, f"fetching wheels for {target.label()}")
            except WheelhouseError as exc:
                raise explain_missing_wheel(exc, target, builder) from None
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


def explain_missing_wheel(error: WheelhouseError, target: TargetPlatform, builder: TargetPlatform
                           ) -> WheelhouseError:
    """pip's "no matching distribution" for a binary-only download, turned into the fixes."""
    found = _NO_WHEEL.search(str(error))
    if not found or target.runs_wheels_built_on(builder):
        return error
    fixes = [f"run the deploy from a machine of the host's platform ({target.label()})"]
    if target.machine == builder.machine:
        fixes.append("use runtime_mode: docker on a runtime image base of this machine's OS "
                     "(runtime_image_base_cpu or _gpu, and its *_os setting), whose wheels are built here")
    fixes.append("leave the extra that needs it out of runtime_wheel_extras")
    return WheelhouseError(
        f"{found.group(1) or found.group(2)} has no binary wheel for {target.label()}, and wheels built from "
        f"its source on this machine ({builder.label()}) would not run there. Fix: {'; or '.join(fixes)}.\n{error}")


def _pip(args: list[str], what: str) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        # pip explains a failed resolution on stdout ("The conflict is caused by: ..."), fails on stderr.
        _, marker, explanation = result.stdout.partition("The conflict is caused by")
        lines = (marker + explanation).splitlines() + result.stderr.strip().splitlines()[-12:]
        raise WheelhouseError(f"{what} failed:\n" + "\n".join(line for line in lines if line.strip()))
