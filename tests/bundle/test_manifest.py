"""The signed manifest: a bundle is trusted only as a whole, and every wrong file is named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import pytest

from deepfleet.bundle.manifest import BundleError, verify_bundle
from deepfleet.bundle.signing import ensure_signer

from tests.conftest import make_bundle

from .conftest import SMALL_FILES, copy_bundle, manifest_of


def test_an_untouched_bundle_verifies_and_names_its_signer(small_bundle, signer):
    verified = verify_bundle(small_bundle, signer.public_key_path)
    assert verified.signer == signer.fingerprint()
    assert set(verified.manifest["files"]) == {*SMALL_FILES, "lock.json"}
    assert verified.files_under("apt/debian-12-amd64") == {
        "pool/python3-venv_3.11.2-1+b1_amd64.deb": verified.manifest["files"][next(iter(SMALL_FILES))],
        "Release": verified.manifest["files"]["apt/debian-12-amd64/Release"]}


@pytest.mark.parametrize("path", [
    "apt/debian-12-amd64/pool/python3-venv_3.11.2-1+b1_amd64.deb",
    "wheels/deps-0123456789abcdef/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl",
    "images/debian_12-slim.tar",
])
def test_a_changed_deb_wheel_or_image_is_named(small_bundle, signer, path):
    target = small_bundle / path
    target.write_bytes(target.read_bytes()[:-1] + b"X")  # same size, other bytes
    with pytest.raises(BundleError) as error:
        verify_bundle(small_bundle, signer.public_key_path)
    assert f"{path}: SHA-256 differs from the manifest" in str(error.value)
    assert str(error.value).count("\n  ") == 1  # only that file


def test_a_changed_manifest_fails_its_signature(small_bundle, signer):
    manifest = small_bundle / "bundle.json"
    manifest.write_text(manifest.read_text().replace('"size": 5', '"size": 6', 1))
    with pytest.raises(BundleError, match=r"bundle\.json: signature bundle\.json\.asc does not verify"):
        verify_bundle(small_bundle, signer.public_key_path)


def test_missing_added_and_truncated_files_are_each_named(small_bundle, signer):
    (small_bundle / "images/debian_12-slim.tar").unlink()
    (small_bundle / "images/extra.tar").write_bytes(b"smuggled")
    (small_bundle / "models/tiny@abc/manifest.json").write_bytes(b"{")
    with pytest.raises(BundleError) as error:
        verify_bundle(small_bundle, signer.public_key_path)
    message = str(error.value)
    assert "images/debian_12-slim.tar: missing" in message
    assert "images/extra.tar: not in the manifest" in message
    assert "models/tiny@abc/manifest.json: 1 bytes, the manifest says 2" in message


def test_a_bundle_signed_by_another_key_is_refused(small_bundle, tmp_path):
    other = ensure_signer(tmp_path / "other-keys", log=lambda _: None)
    try:
        with pytest.raises(BundleError, match="signed by another key"):
            verify_bundle(small_bundle, other.public_key_path)
    finally:
        other.close()


def test_a_missing_signature_or_trusted_key_says_so(small_bundle, signer, tmp_path):
    with pytest.raises(BundleError, match="does not exist; copy the signer's bundle-signing.asc"):
        verify_bundle(small_bundle, tmp_path / "nowhere.asc")
    (tmp_path / "model-verify.pub").write_text("-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----\n")
    with pytest.raises(BundleError, match="model-verify.pub is not an ASCII-armoured OpenPGP public key"):
        verify_bundle(small_bundle, tmp_path / "model-verify.pub")
    (small_bundle / "bundle.json.asc").unlink()
    with pytest.raises(BundleError, match="bundle.json.asc is missing"):
        verify_bundle(small_bundle, signer.public_key_path)


def test_signing_the_same_manifest_again_gives_the_same_bytes(small_bundle, tmp_path, signer):
    from deepfleet.bundle.lock import created_at, load_lock
    from deepfleet.bundle.manifest import write_manifest

    again = copy_bundle(small_bundle, tmp_path / "again")
    (again / "bundle.json.asc").unlink()
    lock = load_lock(again / "lock.json")
    write_manifest(again, lock["created"], signer, created_at(lock))
    assert manifest_of(again) == manifest_of(small_bundle)
    assert (again / "bundle.json.asc").read_bytes() == (small_bundle / "bundle.json.asc").read_bytes()


def _forged_manifest(root, planted: str, content: bytes) -> bytes:
    """bundle.json as an attacker would like it: listing a file they planted, with its real hash."""
    manifest = json.loads((root / "bundle.json").read_text())
    manifest["files"][planted] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def test_a_manifest_swapped_right_after_its_signature_checked_is_not_believed(small_bundle, signer, tmp_path,
                                                                              monkeypatch):
    planted = "wheels/deps-0123456789abcdef/evil-1.0-py3-none-any.whl"
    (small_bundle / planted).write_bytes(b"import os; os.system('id')")
    (tmp_path / "forged.json").write_bytes(_forged_manifest(small_bundle, planted, b"import os; os.system('id')"))
    # whoever can write bundle_dir wins the race: the moment gpgv has said yes, bundle.json changes
    wrapper = tmp_path / "bin" / "gpgv"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\n{shutil.which('gpgv')} \"$@\"; rc=$?\n"
                       f"cp {tmp_path / 'forged.json'} {small_bundle / 'bundle.json'}\nexit $rc\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    with pytest.raises(BundleError, match="evil-1.0-py3-none-any.whl: not in the manifest"):
        verify_bundle(small_bundle, signer.public_key_path)


def test_the_lock_is_the_one_that_verified_not_what_is_on_disk_later(small_bundle, signer):
    verified = verify_bundle(small_bundle, signer.public_key_path)
    original = json.loads((small_bundle / "lock.json").read_text())
    (small_bundle / "lock.json").write_text(json.dumps({**original, "images": {"evil": {"file": "../x"}}}))
    assert verified.lock == original


def test_a_bundle_past_its_expiry_is_refused_with_the_date(tmp_path, signer):
    old = make_bundle(tmp_path / "old", signer, SMALL_FILES, {"created": "2024-01-02T03:04:05Z", "valid_days": 30})
    assert manifest_of(old)["expires"] == "2024-02-01T03:04:05Z"
    with pytest.raises(BundleError, match="expired on 2024-02-01T03:04:05Z.*build a new bundle"):
        verify_bundle(old, signer.public_key_path)


def test_a_fresh_bundle_carries_its_signed_expiry(small_bundle, signer):
    verified = verify_bundle(small_bundle, signer.public_key_path)
    created = verified.manifest["created"]
    assert verified.manifest["expires"] > created and verified.lock["valid_days"] == 365
