"""The bundle signing key itself: sealed under DEEPFLEET_KEY_PASSPHRASE like the project's other
private keys, passed to gpg through a private pipe, and with an expiry the bundles must fit inside.

Real GnuPG homes, real gpg and gpgv; keys that are already expired are made with gpg's own
--faked-system-time (the clock is the one thing a test cannot wait out).
"""

from __future__ import annotations

import datetime
import os
import subprocess

import pytest

from deepfleet.bundle import signing
from deepfleet.bundle.signing import KEY_VALID_DAYS, SigningError, ensure_signer, verify_detached

PASSPHRASE = "correct horse battery staple"
UTC = datetime.timezone.utc


@pytest.fixture
def keys(tmp_path):
    made = []

    def make(name="bundle-keys", **options):
        signer = ensure_signer(tmp_path / name, log=lambda _: None, **options)
        made.append(signer)
        return signer
    yield make
    for signer in made:
        signer.close()


def _gpg(signer, *args, passphrase=""):
    """gpg on the signer's home as an operator would run it (the documented commands)."""
    return subprocess.run(["gpg", "--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback",
                           "--passphrase-fd", "0", *args], input=passphrase, capture_output=True, text=True,
                          env={**os.environ, "GNUPGHOME": str(signer.gnupg_home)}, check=True)


def test_a_key_made_with_the_passphrase_set_is_sealed_and_the_passphrase_never_in_argv(keys, tmp_path,
                                                                                       monkeypatch):
    seen = []
    real_run = subprocess.run

    def recording_run(command, *args, **kwargs):
        seen.append((list(command), dict(kwargs.get("env") or {})))
        return real_run(command, *args, **kwargs)
    monkeypatch.setattr(signing.subprocess, "run", recording_run)
    monkeypatch.setenv("DEEPFLEET_KEY_PASSPHRASE", PASSPHRASE)
    signer = keys()
    (tmp_path / "data").write_text("Release\n")
    signer.sign(tmp_path / "data", datetime.datetime.now(UTC))
    assert seen and all(PASSPHRASE not in " ".join(command) for command, _ in seen)
    assert all(PASSPHRASE not in env.values() for _, env in seen)  # not even in the child's environment

    # the secret key on disk is protected: gpg-agent reports it so (P), and it opens with nothing else
    agent = real_run(["gpg-connect-agent", "KEYINFO --list", "/bye"], capture_output=True, text=True,
                     env={**os.environ, "GNUPGHOME": str(signer.gnupg_home)})
    assert [line.split()[7] for line in agent.stdout.splitlines() if line.startswith("S KEYINFO")] == ["P"]
    monkeypatch.delenv("DEEPFLEET_KEY_PASSPHRASE")
    with pytest.raises(SigningError, match="passphrase-protected: set DEEPFLEET_KEY_PASSPHRASE"):
        signer.sign(tmp_path / "data", datetime.datetime.now(UTC))
    monkeypatch.setenv("DEEPFLEET_KEY_PASSPHRASE", "not it")
    with pytest.raises(SigningError, match="DEEPFLEET_KEY_PASSPHRASE does not open the bundle signing key"):
        signer.sign(tmp_path / "data", datetime.datetime.now(UTC))


def test_a_key_made_without_the_passphrase_stays_usable_without_it(keys, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPFLEET_KEY_PASSPHRASE", raising=False)
    signer = keys()
    (tmp_path / "data").write_text("Release\n")
    monkeypatch.setenv("DEEPFLEET_KEY_PASSPHRASE", PASSPHRASE)  # set later: the clear key still signs
    signature = signer.sign(tmp_path / "data", datetime.datetime.now(UTC))
    assert verify_detached(tmp_path / "data", signature, signer.public_key_path) == signer.fingerprint()


def test_a_new_key_expires_two_years_on_by_default_or_as_asked(keys):
    default, short = keys("default"), keys("short", valid_days=90)
    assert default.expires() - default.created() == datetime.timedelta(days=730)
    assert short.expires() - short.created() == datetime.timedelta(days=90)


def test_a_key_expiring_before_the_bundle_is_refused_then_extended_as_documented(keys, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFLEET_KEY_PASSPHRASE", PASSPHRASE)
    signer = keys(valid_days=30)
    bundle_expires = datetime.datetime.now(UTC) + datetime.timedelta(days=365)
    with pytest.raises(SigningError) as error:
        signer.check_valid_until(bundle_expires)
    message = str(error.value)
    assert "expires on" in message and "before this bundle does" in message
    assert f"gpg --quick-set-expire {signer.fingerprint()} 2y" in message
    assert str(signer.gnupg_home) in message

    # the documented fix: extend the same key, and the next build exports the longer-lived public key
    _gpg(signer, "--quick-set-expire", signer.fingerprint(), "2y", passphrase=PASSPHRASE)
    signer = keys()  # ensure_signer on the existing key, as the next `deepfleet bundle build` does
    signer.check_valid_until(bundle_expires)
    assert signer.expires() > bundle_expires
    (tmp_path / "data").write_text("Release\n")
    signature = signer.sign(tmp_path / "data", datetime.datetime.now(UTC))
    assert verify_detached(tmp_path / "data", signature, signer.public_key_path) == signer.fingerprint()
    exported = subprocess.run(["gpg", "--show-keys", "--with-colons", str(signer.public_key_path)],
                              capture_output=True, text=True, check=True).stdout
    assert int(next(line for line in exported.splitlines() if line.startswith("pub")).split(":")[6]) \
        == int(signer.expires().timestamp())


def _expired_signer(tmp_path):
    """A key made three days ago valid for two, with a signature from while it was valid."""
    signer = ensure_signer(tmp_path / "old-keys", log=lambda _: None)  # the layout and agent settings
    signer.close()
    for item in signer.gnupg_home.iterdir():
        if item.name != "gpg-agent.conf":
            subprocess.run(["rm", "-rf", str(item)], check=True)
    back = lambda days: (datetime.datetime.now(UTC) - datetime.timedelta(days=days)).strftime("%Y%m%dT%H%M%S!")
    _gpg(signer, "--faked-system-time", back(3), "--quick-gen-key", "expired", "ed25519", "sign", "2d")
    signer.public_key_path.write_text(_gpg(signer, "--armor", "--export").stdout)
    (tmp_path / "data").write_text("Release\n")
    _gpg(signer, "--faked-system-time", back(2), "--armor", "--detach-sign", "-o", str(tmp_path / "data.asc"),
         str(tmp_path / "data"))
    return signer


def test_an_expired_key_is_refused_for_building(tmp_path):
    signer = _expired_signer(tmp_path)
    try:
        with pytest.raises(SigningError, match=r"expired on .*gpg --quick-set-expire .* or move .* aside"):
            signer.check_valid_until(datetime.datetime.now(UTC))
    finally:
        signer.close()


def test_a_signature_by_a_key_that_has_expired_does_not_verify(tmp_path):
    signer = _expired_signer(tmp_path)
    try:
        # gpgv itself exits 0 on a key that has expired (EXPKEYSIG with VALIDSIG); apt refuses it, so must we
        with pytest.raises(SigningError, match=r"the signing key expired .*copy .*bundle-signing.asc"):
            verify_detached(tmp_path / "data", tmp_path / "data.asc", signer.public_key_path)
    finally:
        signer.close()


def test_a_build_with_a_key_expiring_before_the_bundle_stops_before_anything_is_made(tmp_path):
    from deepfleet.bundle.build import build_bundle
    from deepfleet.bundle.spec import BundleSpec

    keys_dir = tmp_path / "keys"
    ensure_signer(keys_dir, log=lambda _: None, valid_days=30).close()
    with pytest.raises(SigningError, match="before this bundle does"):
        build_bundle(BundleSpec(os_targets=(), wheels=()), tmp_path / "bundle", signer_dir=keys_dir, cache=tmp_path / "cache",
                     runtime_src=tmp_path, model_keys_dir=None, log=lambda _: None)
    assert not (tmp_path / "bundle").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")] == []


def test_bundle_build_passes_the_days_asked_to_the_key_even_zero_which_is_then_refused(monkeypatch, tmp_path):
    import argparse

    import deepfleet.bundle.build as build
    from deepfleet.commands import bundle as bundle_command

    asked = []
    monkeypatch.setattr(build, "build_bundle", lambda *a, signing_key_valid_days, **k: asked.append(
        signing_key_valid_days) or {"files": {}, "signer": "x"})
    parser = argparse.ArgumentParser()
    bundle_command.register(parser.add_subparsers(dest="command"))
    inventory = tmp_path / "inventory.py"
    inventory.write_text('gpu_nodes = [("gpu1", {"ssh_hostname": "10.0.0.11", "bundle_host_os": "debian-12"})]\n')
    for extra, expected in (([], KEY_VALID_DAYS), (["--signing-key-valid-days", "0"], 0)):
        args = parser.parse_args(["bundle", "build", str(inventory), "--out", str(tmp_path / "b"), *extra])
        assert args.func(args) == 0
        assert asked.pop() == expected
    with pytest.raises(SigningError, match="at least a day"):
        ensure_signer(tmp_path / "keys", log=lambda _: None, valid_days=0)
