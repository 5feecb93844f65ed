"""The internal CA and host certificates."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from deepfleet import pki
from deepfleet.pki import (PkiError, certificate_status, ensure_audit_signing_key, ensure_client_cert,
                           ensure_server_cert, init_ca)


def _sans(path):
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted([str(v) for v in ext.get_values_for_type(x509.DNSName)]
                  + [str(v) for v in ext.get_values_for_type(x509.IPAddress)])


def test_ca_is_created_once_with_a_private_key(tmp_path):
    paths, created = init_ca(tmp_path / "pki")
    assert created
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    before = paths.cert.read_bytes()
    _, created_again = init_ca(tmp_path / "pki")
    assert not created_again
    assert paths.cert.read_bytes() == before


def test_half_a_ca_is_refused(tmp_path):
    paths, _ = init_ca(tmp_path / "pki")
    paths.key.unlink()
    with pytest.raises(PkiError, match="half of a CA"):
        init_ca(tmp_path / "pki")


def test_server_cert_needs_a_ca(tmp_path):
    with pytest.raises(PkiError, match="deepfleet pki init"):
        ensure_server_cert(tmp_path / "none", "h1", ["h1"])


def test_server_cert_is_kept_until_its_names_change(tmp_path):
    ca, _ = init_ca(tmp_path / "pki")
    pair, issued = ensure_server_cert(tmp_path / "pki", "h1", ["h1", "10.0.0.5"])
    assert issued
    assert _sans(pair.cert) == ["10.0.0.5", "h1"]
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.read_bytes()))

    _, issued = ensure_server_cert(tmp_path / "pki", "h1", ["10.0.0.5", "h1"])
    assert not issued
    _, issued = ensure_server_cert(tmp_path / "pki", "h1", ["h1", "h1.internal"])
    assert issued
    assert _sans(pair.cert) == ["h1", "h1.internal"]


def test_server_cert_is_reissued_for_a_new_ca(tmp_path):
    init_ca(tmp_path / "pki")
    ensure_server_cert(tmp_path / "pki", "h1", ["h1"])
    for name in ("ca.crt", "ca.key"):
        (tmp_path / "pki" / name).unlink()
    init_ca(tmp_path / "pki")
    _, issued = ensure_server_cert(tmp_path / "pki", "h1", ["h1"])
    assert issued


def test_client_certificate_is_for_client_auth_only(tmp_path):
    ca, _ = init_ca(tmp_path / "pki")
    pair, issued = ensure_client_cert(tmp_path / "pki", "gw1")
    assert issued and stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _sans(pair.cert) == ["gw1"]
    _, issued_again = ensure_client_cert(tmp_path / "pki", "gw1")
    assert not issued_again


def test_certificates_near_expiry_are_renewed(tmp_path, monkeypatch):
    init_ca(tmp_path / "pki")
    monkeypatch.setattr(pki, "LEAF_DAYS", 20)  # already inside the 30-day renewal window
    pair, _ = ensure_server_cert(tmp_path / "pki", "h1", ["h1"])
    short = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    monkeypatch.setattr(pki, "LEAF_DAYS", 397)
    _, issued = ensure_server_cert(tmp_path / "pki", "h1", ["h1"])
    assert issued
    renewed = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    assert renewed.not_valid_after_utc > short.not_valid_after_utc
    rows = {row["path"]: row for row in certificate_status(tmp_path / "pki")}
    assert rows["hosts/h1/server.crt"]["days_left"] >= 390 and rows["hosts/h1/server.crt"]["names"] == ["h1"]


def test_audit_signing_key_is_ed25519_and_kept(tmp_path):
    pair = ensure_audit_signing_key(tmp_path / "pki", "h1")
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    public = serialization.load_pem_public_key(pair.cert.read_bytes())
    assert isinstance(public, ed25519.Ed25519PublicKey)
    before = pair.key.read_bytes()
    assert ensure_audit_signing_key(tmp_path / "pki", "h1").key.read_bytes() == before


def test_the_ca_key_is_sealed_with_a_passphrase_when_one_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFLEET_KEY_PASSPHRASE", "correct horse battery staple")
    paths, _ = init_ca(tmp_path / "pki")
    assert "ENCRYPTED PRIVATE KEY" in paths.key.read_text()
    pair, _ = ensure_server_cert(tmp_path / "pki", "h1", ["h1"])
    assert "ENCRYPTED" not in pair.key.read_text()  # a host's own key is pushed to it, unencrypted
    monkeypatch.delenv("DEEPFLEET_KEY_PASSPHRASE")
    with pytest.raises(PkiError, match="passphrase-protected.*DEEPFLEET_KEY_PASSPHRASE"):
        ensure_server_cert(tmp_path / "pki", "h2", ["h2"])
