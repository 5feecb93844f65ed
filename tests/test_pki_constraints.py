"""NameConstraints on the internal CA: real TLS handshakes on 127.0.0.1 through Python's ssl
(OpenSSL), and through the openai SDK (httpx), refuse a certificate the CA signed for a name
outside the permitted subtrees, and accept one inside."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deepfleet.keyfiles import load_private_key
from deepfleet.pki import PkiError, ca_paths, certificate_status, ensure_server_cert, init_ca, name_constraints


def _forged(pki_dir, tmp_path, names):
    """What a thief holding a certificate the CA signed (or the CA key) for another name presents."""
    ca = ca_paths(pki_dir)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = load_private_key(ca.key, PkiError)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "forged.crt", tmp_path / "forged.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Server:
    """A TLS server on 127.0.0.1 (or another loopback address) presenting one certificate."""

    def __init__(self, cert, key, address="127.0.0.1"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = b'{"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer((address, 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _handshake(ca_cert, port, server_hostname, address="127.0.0.1"):
    context = ssl.create_default_context(cafile=str(ca_cert))
    with socket.create_connection((address, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.version()


def test_the_ca_carries_critical_permitted_subtrees_only_when_asked(tmp_path):
    plain, _ = init_ca(tmp_path / "plain")
    assert name_constraints(plain.cert) is None
    paths, _ = init_ca(tmp_path / "pki", permitted=["example.hospital.org", "10.0.0.0/8", "192.0.2.7"])
    ext = x509.load_pem_x509_certificate(paths.cert.read_bytes()).extensions.get_extension_for_class(
        x509.NameConstraints)
    assert ext.critical and ext.value.excluded_subtrees is None
    # the deploy's own readiness checks connect to localhost / 127.0.0.1: always permitted
    assert name_constraints(paths.cert) == ["example.hospital.org", "localhost", "10.0.0.0/8", "192.0.2.7/32",
                                            "127.0.0.1/32"]
    assert any("permitted" in row and row["permitted"] for row in certificate_status(tmp_path / "pki"))


def test_a_bad_permit_is_refused(tmp_path):
    with pytest.raises(PkiError, match="10.0.0.1/8"):
        init_ca(tmp_path / "pki", permitted=["10.0.0.1/8"])
    with pytest.raises(PkiError, match="not a DNS name"):
        init_ca(tmp_path / "pki", permitted=["https://x.org"])


def test_openssl_refuses_a_ca_signed_certificate_outside_the_constraints_and_accepts_one_inside(tmp_path):
    pki_dir = tmp_path / "pki"
    init_ca(pki_dir, permitted=["hospital.test"])
    inside, _ = ensure_server_cert(pki_dir, "gw1.hospital.test", ["gw1.hospital.test", "localhost", "127.0.0.1"])
    with _Server(inside.cert, inside.key) as server:
        assert _handshake(ca_paths(pki_dir).cert, server.port, "gw1.hospital.test") == "TLSv1.3"
        assert _handshake(ca_paths(pki_dir).cert, server.port, "127.0.0.1")

    cert, key = _forged(pki_dir, tmp_path, ["bank.example"])
    with _Server(cert, key) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
            _handshake(ca_paths(pki_dir).cert, server.port, "bank.example")

    # the same forgery from a CA without constraints is accepted: the refusal is the constraint's
    plain = tmp_path / "plain"
    init_ca(plain)
    cert, key = _forged(plain, tmp_path, ["bank.example"])
    with _Server(cert, key) as server:
        assert _handshake(ca_paths(plain).cert, server.port, "bank.example") == "TLSv1.3"


def test_an_ip_outside_the_permitted_networks_is_refused(tmp_path):
    pki_dir = tmp_path / "pki"
    init_ca(pki_dir, permitted=["hospital.test", "10.0.0.0/8"])
    cert, key = _forged(pki_dir, tmp_path, ["127.0.0.2"])  # loopback, but not 127.0.0.1/32
    with _Server(cert, key, address="127.0.0.2") as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
            _handshake(ca_paths(pki_dir).cert, server.port, "127.0.0.2", address="127.0.0.2")


def test_the_openai_sdk_over_httpx_honours_the_constraints(tmp_path):
    pki_dir = tmp_path / "pki"
    init_ca(pki_dir, permitted=["localhost"])
    context = ssl.create_default_context(cafile=str(ca_paths(pki_dir).cert))
    inside, _ = ensure_server_cert(pki_dir, "localhost", ["localhost"])
    with _Server(inside.cert, inside.key) as server:
        client = openai.OpenAI(base_url=f"https://localhost:{server.port}/v1", api_key="k", max_retries=0,
                               http_client=httpx.Client(verify=context))
        assert [m.id for m in client.models.list()] == ["m"]
    cert, key = _forged(pki_dir, tmp_path, ["bank.example", "127.0.0.1"])
    with _Server(cert, key) as server:
        client = openai.OpenAI(base_url=f"https://127.0.0.1:{server.port}/v1", api_key="k", max_retries=0,
                               http_client=httpx.Client(verify=context))
        with pytest.raises(openai.APIConnectionError) as refused:
            client.models.list()
        assert "permitted subtree violation" in repr(refused.value.__cause__) + repr(refused.value.__cause__.__cause__)


def test_the_ca_refuses_to_issue_a_name_outside_its_constraints(tmp_path):
    pki_dir = tmp_path / "pki"
    init_ca(pki_dir, permitted=["hospital.test", "10.0.0.0/8"])
    ensure_server_cert(pki_dir, "gpu1.hospital.test", ["gpu1.hospital.test", "10.1.2.3", "localhost", "127.0.0.1"])
    with pytest.raises(PkiError, match=r"gpu1: .*permits only hospital\.test.*'gpu1' outside"):
        ensure_server_cert(pki_dir, "gpu1", ["gpu1", "localhost", "127.0.0.1"])
    with pytest.raises(PkiError, match="192.168.1.5"):
        ensure_server_cert(pki_dir, "gpu2.hospital.test", ["gpu2.hospital.test", "192.168.1.5"])


def test_pki_init_takes_permits_from_the_command_line(tmp_path, capsys):
    from deepfleet.cli import main

    assert main(["pki", "init", "--dir", str(tmp_path / "pki"), "--permit", "example.hospital.org",
                 "--permit", "10.0.0.0/8"]) == 0
    assert name_constraints(tmp_path / "pki" / "ca.crt") == ["example.hospital.org", "localhost", "10.0.0.0/8",
                                                             "127.0.0.1/32"]
    assert "names it can certify: example.hospital.org" in capsys.readouterr().out
    assert main(["pki", "init", "--dir", str(tmp_path / "other")]) == 0
    assert name_constraints(tmp_path / "other" / "ca.crt") is None
    assert "any (no NameConstraints)" in capsys.readouterr().out
