"""A real bundle signing key (GnuPG, made once per session) and small bundles signed with it.

The files of a small bundle are stand-ins (a few bytes named like a .deb, a wheel, an image
tarball): what is tested here is the manifest, the signature and the checks, which read bytes and
names only. Real packages, wheels and models go into the bundle of tests/fleet/test_bundle.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deepfleet.bundle.lock import LOCK_FILE, created_at, lock_text, new_lock
from deepfleet.bundle.manifest import write_manifest
from deepfleet.bundle.signing import ensure_signer

SMALL_FILES = {
    "apt/debian-12-amd64/pool/python3-venv_3.11.2-1+b1_amd64.deb": b"a deb",
    "apt/debian-12-amd64/Release": b"Origin: deepfleet\n",
    "wheels/deps-0123456789abcdef/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl": b"a wheel",
    "images/debian_12-slim.tar": b"an image",
    "models/tiny@abc/manifest.json": b"{}",
}


@pytest.fixture(scope="session")
def signer(tmp_path_factory):
    signer = ensure_signer(tmp_path_factory.mktemp("keys") / "bundle-keys", log=lambda _: None)
    yield signer
    signer.close()


@pytest.fixture
def small_bundle(tmp_path, signer):
    """A signed bundle of SMALL_FILES and a lock, in tmp_path/bundle."""
    root = tmp_path / "bundle"
    for name, content in SMALL_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    lock = new_lock()
    (root / LOCK_FILE).write_text(lock_text(lock))
    write_manifest(root, lock["created"], signer, created_at(lock))
    return root


def copy_bundle(root: Path, to: Path) -> Path:
    shutil.copytree(root, to)
    return to


def manifest_of(root: Path) -> dict:
    return json.loads((root / "bundle.json").read_text())
