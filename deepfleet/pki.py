"""The fleet's internal PKI: a CA that never leaves the control machine, and what it issues.

Layout of a PKI directory:
    ca.key (0600)  ca.crt
    hosts/<host>/server.key (0600)  hosts/<host>/server.crt    TLS server (gateway; runtime over mTLS)
    hosts/<host>/client.key (0600)  hosts/<host>/client.crt    the host's gateway as a TLS client
                                                               of runtimes on other hosts (mTLS)
    hosts/<host>/audit-signing.key (0600)  .../audit-signing.pub   Ed25519 audit checkpoints

Certificates are reissued by the deploy when their names change, when the CA changed, or when
they are within RENEW_BEFORE of expiry; the new files are pushed and the service restarted.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .atomicfile import write_atomic
from .keyfiles import load_private_key, private_key_pem

CA_DAYS = 3650
LEAF_DAYS = 397  # the CA/Browser Forum ceiling; the deploy renews well before expiry
RENEW_BEFORE = datetime.timedelta(days=30)


class PkiError(RuntimeError):
    """The PKI directory is missing or inconsistent; the message says how to fix it."""


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def ca_paths(pki_dir: Path) -> CertPair:
    return CertPair(Path(pki_dir) / "ca.crt", Path(pki_dir) / "ca.key")


def init_ca(pki_dir: Path, common_name: str = "deepfleet internal CA") -> tuple[CertPair, bool]:
    """Create the CA in `pki_dir` unless it exists; returns its paths and whether it was created."""
    paths = ca_paths(pki_dir)
    if paths.cert.exists() and paths.key.exists():
        return paths, False
    if paths.cert.exists() or paths.key.exists():
        raise PkiError(f"{pki_dir} holds only half of a CA (ca.crt or ca.key); restore the other "
                       "half from backup, or move both away to start a new CA")
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "deepfleet")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    Path(pki_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(paths.key, private_key_pem(key), mode=0o600)  # under DEEPFLEET_KEY_PASSPHRASE when set
    write_atomic(paths.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return paths, True


def ensure_server_cert(pki_dir: Path, host_name: str, server_names: list[str]) -> tuple[CertPair, bool]:
    """A server certificate for `host_name` covering `server_names` (DNS names or IPs).

    The existing one is kept while it is signed by this CA, covers exactly these names and is
    more than RENEW_BEFORE from expiry; otherwise a new key and certificate are issued.
    Returns the paths and whether a new certificate was issued.
    """
    return _ensure_leaf(pki_dir, host_name, "server", server_names, ExtendedKeyUsageOID.SERVER_AUTH)


def ensure_client_cert(pki_dir: Path, host_name: str) -> tuple[CertPair, bool]:
    """A client certificate (CN and SAN = `host_name`) for the gateway on `host_name` to present
    to runtimes on other hosts; kept and renewed like server certificates."""
    return _ensure_leaf(pki_dir, host_name, "client", [host_name], ExtendedKeyUsageOID.CLIENT_AUTH)


def ensure_audit_signing_key(pki_dir: Path, host_name: str) -> CertPair:
    """The Ed25519 key `host_name`'s gateway signs audit checkpoints with (`cert` is the public
    key, PEM, for `deepfleet-runtime audit verify --public-key`); created once, kept."""
    host_dir = Path(pki_dir) / "hosts" / host_name
    pair = CertPair(host_dir / "audit-signing.pub", host_dir / "audit-signing.key")
    if pair.key.exists() and pair.cert.exists():
        return pair
    key = ed25519.Ed25519PrivateKey.generate()
    host_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(pair.key, _key_pem(key), mode=0o600)
    write_atomic(pair.cert, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return pair


def certificate_status(pki_dir: Path) -> list[dict]:
    """Every certificate under `pki_dir`: path, subject, names, expiry, days left."""
    rows = []
    for path in sorted(Path(pki_dir).glob("**/*.crt")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(v) for v in sans.get_values_for_type(x509.DNSName)] + \
                    [str(v) for v in sans.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = []
        expires = cert.not_valid_after_utc
        rows.append({"path": str(path.relative_to(pki_dir)), "subject": cert.subject.rfc4514_string(),
                     "names": names, "expires": expires.isoformat(timespec="seconds"),
                     "days_left": (expires - _now()).days})
    return rows


def _ensure_leaf(pki_dir: Path, host_name: str, kind: str, names: list[str], usage) -> tuple[CertPair, bool]:
    ca = ca_paths(pki_dir)
    if not (ca.cert.exists() and ca.key.exists()):
        raise PkiError(f"no CA in {pki_dir}; create it with `deepfleet pki init` (or run `deepfleet demo`)")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    host_dir = Path(pki_dir) / "hosts" / host_name
    pair = CertPair(host_dir / f"{kind}.crt", host_dir / f"{kind}.key")
    wanted = sorted(set(names))
    if pair.cert.exists() and pair.key.exists() and _still_good(pair.cert, ca_cert, wanted):
        return pair, False
    ca_key = load_private_key(ca.key, PkiError)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in wanted]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    host_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(pair.key, _key_pem(key), mode=0o600)
    write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return pair, True


def _still_good(cert_path: Path, ca_cert: x509.Certificate, wanted: list[str]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    if cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    present = sorted([str(v) for v in sans.get_values_for_type(x509.DNSName)]
                     + [str(v) for v in sans.get_values_for_type(x509.IPAddress)])
    return present == wanted


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
