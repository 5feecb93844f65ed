"""Pinned vendor keys: the fingerprint of a real GnuPG key, and the host-side fetch that refuses another."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deepfleet import pgpkeys
from deepfleet.bundle.signing import dearmor
from deepfleet.pgpkeys import PinError, check_pinned, primary_fingerprints


def test_the_fingerprint_is_the_one_gnupg_gives(signer):
    armoured = signer.public_key_path.read_bytes()
    assert primary_fingerprints(armoured) == [signer.fingerprint()]
    assert primary_fingerprints(dearmor(armoured.decode())) == [signer.fingerprint()]  # binary keyrings too
    check_pinned(armoured, [" ".join(signer.fingerprint()[i:i + 4] for i in range(0, 40, 4))], "here")  # spaced


def test_another_key_is_refused_naming_the_pinned_fingerprint(signer):
    with pytest.raises(PinError, match=f"has fingerprint {signer.fingerprint()}, not the pinned 9DC858229FC7"):
        check_pinned(signer.public_key_path.read_bytes(), ["9DC858229FC7DD38854AE2D88D81803C0EBFCD88"], "mirror")


def test_the_hosts_fetch_writes_the_key_only_when_its_fingerprint_is_pinned(signer, tmp_path):
    source = open(pgpkeys.__file__).read()
    url = signer.public_key_path.as_uri()
    refused = subprocess.run([sys.executable, "-c", source, url, str(tmp_path / "a.asc"),
                              "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"], capture_output=True, text=True)
    assert refused.returncode != 0 and "not the pinned 9DC858229FC7" in refused.stderr
    assert not (tmp_path / "a.asc").exists()
    accepted = subprocess.run([sys.executable, "-c", source, url, str(tmp_path / "b.asc"), signer.fingerprint()],
                              capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    assert (tmp_path / "b.asc").read_bytes() == signer.public_key_path.read_bytes()
