"""Small bundles, signed with the session's real bundle signing key (tests/conftest.py).

The files of a small bundle are stand-ins (a few bytes named like a .deb, a wheel, an image
tarball): what is tested here is the manifest, the signature and the checks, which read bytes and
names only. Real packages, wheels and models go into the bundle of tests/fleet/test_bundle.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_bundle

SMALL_FILES = {
    "apt/debian-12-amd64/pool/python3-venv_3.11.2-1+b1_amd64.deb": b"a deb",
    "apt/debian-12-amd64/Release": b"Origin: deepfleet\n",
    "wheels/deps-0123456789abcdef/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl": b"a wheel",
    "images/debian_12-slim.tar": b"an image",
    "models/tiny@abc/manifest.json": b"{}",
}


@pytest.fixture
def small_bundle(tmp_path, signer):
    """A signed bundle of SMALL_FILES and a lock, in tmp_path/bundle."""
    return make_bundle(tmp_path / "bundle", signer, SMALL_FILES)


def copy_bundle(root: Path, to: Path) -> Path:
    shutil.copytree(root, to)
    return to


def manifest_of(root: Path) -> dict:
    return json.loads((root / "bundle.json").read_text())
