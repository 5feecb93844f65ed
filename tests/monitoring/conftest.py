"""promtool from Debian 12's own prometheus package (the one the monitoring role installs), unpacked
once into the cache, keyed by the package version apt offers."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from deepfleet.filelock import exclusive_lock
from deepfleet.paths import cache_dir


def _candidate_version() -> str:
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", "prometheus"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("Version: "):
            return line.split(" ", 1)[1].strip()
    pytest.skip("apt offers no prometheus package here (Debian 12's main has it)")


def ensure_promtool() -> Path:
    """$DEEPFLEET_CACHE/promtool/<version>/promtool, from `apt-get download prometheus`."""
    root = cache_dir() / "promtool"
    target = root / _candidate_version().replace(":", "_") / "promtool"
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / ".lock"):
        if not target.exists():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                subprocess.run(["apt-get", "download", "-q", "prometheus"], cwd=tmp, check=True,
                               capture_output=True)
                deb = next(Path(tmp).glob("prometheus_*.deb"))
                subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(f"{tmp}/x/usr/bin/promtool", target.with_suffix(".partial"))
                target.with_suffix(".partial").rename(target)
    return target


@pytest.fixture(scope="session")
def promtool() -> Path:
    return ensure_promtool()
