"""The lock: a rebuild from it must cover what the inventory needs, or say what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepfleet.bundle.lock import LockError, check_covers, load_lock, lock_text, new_lock
from deepfleet.bundle.spec import BundleSpec, ModelSource, OsTarget, WheelTarget

TARGET = OsTarget("debian", "12", "debian", "x86_64", "amd64", "debian:12", ("python3", "python3-venv"))
WHEELS = WheelTarget("3.11", "x86_64", "2.36", ("transformers",))


def _lock() -> dict:
    lock = new_lock()
    lock["os"][TARGET.key] = {"packages": ["python3", "python3-venv"], "resolver_image": "debian:12", "debs": []}
    lock["wheelhouses"][WHEELS.key] = {}
    lock["models"]["tiny"] = {}
    return lock


def test_a_lock_covering_the_inventory_passes():
    check_covers(_lock(), BundleSpec((TARGET,), (WHEELS,), models=(ModelSource("tiny", Path("/m")),)), Path("l"))


def test_what_the_lock_lacks_is_listed():
    spec = BundleSpec((OsTarget("debian", "12", "debian", "x86_64", "amd64", "debian:12", ("python3", "docker.io")),),
                      (WheelTarget("3.11", "x86_64", "2.36", ()),), images=("debian:12-slim",),
                      models=(ModelSource("other", Path("/m")),))
    with pytest.raises(LockError) as error:
        check_covers(_lock(), spec, Path("old/lock.json"))
    message = str(error.value)
    assert "debian-12-amd64 packages (now needed: docker.io; no longer needed: python3-venv)" in message
    assert "wheels cp311-x86_64-glibc2.36-cpu-light" in message and "image debian:12-slim" in message
    assert "model other" in message and "Build without --lock" in message


def test_a_file_that_is_no_lock_is_refused(tmp_path):
    (tmp_path / "lock.json").write_text(lock_text({"format": "something else"}))
    with pytest.raises(LockError, match="not a deepfleet bundle lock"):
        load_lock(tmp_path / "lock.json")
