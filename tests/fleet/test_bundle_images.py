"""Image tarballs in a bundle, against this machine's real Docker engine (no registry: a tiny image is
imported locally): saved reproducibly, pinned by id, and a changed tarball is named by verify."""

from __future__ import annotations

import io
import secrets
import subprocess
import tarfile

import pytest

from deepfleet.bundle.images import ImageError, image_file, save_image
from deepfleet.bundle.manifest import BundleError, verify_bundle
from tests.conftest import make_bundle

pytestmark = pytest.mark.fleet


@pytest.fixture
def tiny_image():
    """A one-file image made with `docker import`, removed afterwards (only this one)."""
    tag = f"deepfleet-bundle-test:{secrets.token_hex(4)}"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = b"hello from a bundle\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(["docker", "import", "-", tag], input=layer.getvalue(), check=True, capture_output=True)
    yield tag
    subprocess.run(["docker", "rmi", "--force", tag], capture_output=True)


def test_an_image_saves_to_the_same_bytes_and_is_pinned_by_id(tiny_image, tmp_path):
    first = save_image(tiny_image, tmp_path / "one", None)
    assert save_image(tiny_image, tmp_path / "two", first) == first
    assert (tmp_path / "one" / first["file"]).read_bytes() == (tmp_path / "two" / first["file"]).read_bytes()
    assert first["file"] == image_file(tiny_image) and first["id"].startswith("sha256:")
    with pytest.raises(ImageError, match="the lock pins sha256:0"):
        save_image(tiny_image, tmp_path / "three", {**first, "id": "sha256:0"})
    with pytest.raises(ImageError, match="is not in this machine's Docker; `docker pull"):
        save_image("deepfleet-bundle-test:no-such-tag", tmp_path / "four", None)


def test_a_changed_image_tarball_is_named(tiny_image, tmp_path, signer):
    entry = save_image(tiny_image, tmp_path / "saved", None)
    tarball = (tmp_path / "saved" / entry["file"]).read_bytes()
    bundle = make_bundle(tmp_path / "bundle", signer, {entry["file"]: tarball}, {"images": {tiny_image: entry}})
    verify_bundle(bundle, signer.public_key_path)
    (bundle / entry["file"]).write_bytes(tarball.replace(b"hello from a bundle", b"hello from elsewhere"[:19]))
    with pytest.raises(BundleError, match=f"{entry['file']}: SHA-256 differs from the manifest"):
        verify_bundle(bundle, signer.public_key_path)
