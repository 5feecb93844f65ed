"""The lock: a rebuild from it must cover what the inventory needs, or say what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepfleet.bundle.lock import LockError, check_covers, load_lock, lock_text, locked_os, new_lock, os_entry
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


def test_the_lock_records_the_pinned_resolver_image_and_the_id_that_ran():
    pin = f"deepfleet-testhost:abc@sha256:{'1' * 64}"
    target = OsTarget("debian", "12", "debian", "x86_64", "amd64", pin, ("python3-venv", "python3"))
    entry = os_entry(target, [{"file": "a.deb"}], pin, f"sha256:{'1' * 64}")
    assert entry == {"packages": ["python3", "python3-venv"], "resolver_image": pin,
                     "resolver_image_id": f"sha256:{'1' * 64}", "debs": [{"file": "a.deb"}]}
    lock = new_lock()
    lock["os"][target.key] = entry
    said = []
    assert locked_os(lock, target, said.append) == entry  # a rebuild takes the locked packages, no image runs
    assert said == []
    moved = OsTarget("debian", "12", "debian", "x86_64", "amd64", f"debian@sha256:{'2' * 64}", ("python3",))
    assert locked_os(lock, moved, said.append) == entry  # the lock says what resolved them, not the inventory
    assert said and f"resolved in {pin} (image ID sha256:{'1' * 64})" in said[0] and "debian@sha256:2" in said[0]
    assert locked_os(new_lock(), target, said.append) is None


def test_a_lock_whose_packages_were_resolved_in_an_unpinned_image_says_so():
    said = []
    assert locked_os(_lock(), TARGET, said.append)["resolver_image"] == "debian:12"
    assert "resolved in debian:12, an image not pinned by digest" in said[0] and "without --lock" in said[0]
