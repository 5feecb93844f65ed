"""promtool and the node exporter from Debian 12's own packages (the ones the monitoring role
installs), unpacked once into the cache, keyed by package and the version apt offers."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from deepfleet.filelock import exclusive_lock
from deepfleet.paths import cache_dir


def _candidate_version(package: str) -> str:
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("Version: "):
            return line.split(" ", 1)[1].strip()
    pytest.skip(f"apt offers no {package} package here (Debian 12's main has it)")


def debian_binary(package: str, binary: str) -> Path:
    """$DEEPFLEET_CACHE/debian-bin/<package>/<version>/<binary>, from `apt-get download <package>`."""
    root = cache_dir() / "debian-bin" / package
    target = root / _candidate_version(package).replace(":", "_") / binary
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / ".lock"):
        if not target.exists():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True, capture_output=True)
                deb = next(Path(tmp).glob(f"{package}_*.deb"))
                subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(f"{tmp}/x/usr/bin/{binary}", target.with_suffix(".partial"))
                target.with_suffix(".partial").rename(target)
    return target


@pytest.fixture(scope="session")
def promtool() -> Path:
    return debian_binary("prometheus", "promtool")


@pytest.fixture(scope="session")
def node_exporter() -> Path:
    return debian_binary("prometheus-node-exporter", "prometheus-node-exporter")
