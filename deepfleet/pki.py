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
import re
import secrets
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


def init_ca(pki_dir: Path, common_name: str = "deepfleet internal CA",
            permitted: list[str] | tuple[str, ...] = ()) -> tuple[CertPair, bool]:
    """Create the CA in `pki_dir` unless it exists; returns its paths and whether it was created.

    `permitted` (DNS names, IP addresses or networks) makes the CA carry a critical X.509
    NameConstraints extension: TLS clients (OpenSSL, hence Python's ssl, httpx and the openai SDK)
    then refuse any certificate it signed for a name outside those subtrees, so a certificate
    issued, or forged with a stolen CA key, for another domain is worthless. A DNS name permits
    itself and every name below it. localhost and 127.0.0.1 are always added (the deploy's
    readiness checks connect there). Empty: no constraints (the default, since the names the
    fleet will use are often not known when the CA is made). An existing CA is never changed.
    """
    paths = ca_paths(pki_dir)
    if paths.cert.exists() and paths.key.exists():
        return paths, False
    if paths.cert.exists() or paths.key.exists():
        raise PkiError(f"{pki_dir} holds only half of a CA (ca.crt or ca.key); restore the other "
                       "half from backup, or move both away to start a new CA")
    subtrees = _permitted_subtrees(permitted) if permitted else []
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
    )
    if subtrees:
        cert = cert.add_extension(x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None),
                                  critical=True)
    cert = cert.sign(key, hashes.SHA384())
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


def ensure_limits_store_password(pki_dir: Path) -> tuple[Path, Path]:
    """The password of the fleet's limits store (roles/limits_store.py): (the password file the
    gateways read, the store's `requirepass` line), both 0600 in <pki>/limits-store/; created once."""
    directory = Path(pki_dir) / "limits-store"
    password, config = directory / "password", directory / "requirepass.conf"
    if not (password.exists() and config.exists()):
        secret = secrets.token_urlsafe(32)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(password, secret + "\n", mode=0o600)
        write_atomic(config, f"requirepass {secret}\n", mode=0o600)
    return password, config


_ALWAYS_PERMITTED = ("localhost", "127.0.0.1")  # roles/tls.py puts these in every server certificate


def _permitted_subtrees(permitted) -> list[x509.GeneralName]:
    dns, ips = [], []
    for entry in [*permitted, *_ALWAYS_PERMITTED]:
        entry = entry.strip()
        try:
            network = ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            if re.fullmatch(r"[0-9.]+(/\d+)?|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/\d+)?", entry):
                raise PkiError(f"--permit {entry}: {exc} (give a network like 10.0.0.0/8 or one address)") from None
            name = entry.lower().lstrip(".")
            if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", name):
                raise PkiError(f"--permit {entry!r} is not a DNS name (example.hospital.org), an IP address "
                               "or a network (10.0.0.0/8)") from None
            if name not in dns:
                dns.append(name)
            continue
        if network not in ips:
            ips.append(network)
    return [x509.DNSName(name) for name in dns] + [x509.IPAddress(network) for network in ips]


def name_constraints(ca_cert_path: Path) -> list[str] | None:
    """The CA's permitted subtrees (DNS names, then networks), or None when it has no NameConstraints."""
    cert = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
    try:
        value = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    subtrees = value.permitted_subtrees or []
    return [str(s.value) for s in subtrees if isinstance(s, x509.DNSName)] + \
        [str(s.value) for s in subtrees if isinstance(s, x509.IPAddress)]


def _outside(names: list[str], permitted: list[str]) -> list[str]:
    """The names RFC 5280 name constraints would refuse: a DNS name neither equal to nor below a
    permitted DNS subtree (when there is one), an IP outside every permitted network (when there is one)."""
    dns = [p for p in permitted if "/" not in p]
    networks = [ipaddress.ip_network(p) for p in permitted if "/" in p]
    refused = []
    for name in names:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            if dns and not any(name.lower() == p or name.lower().endswith("." + p) for p in dns):
                refused.append(name)
            continue
        if networks and not any(address in network for network in networks):
            refused.append(name)
    return refused


def certificate_status(pki_dir: Path) -> list[dict]:
    """Every certificate under `pki_dir`: path, subject, names, expiry, days left (and for a CA
    with NameConstraints, `permitted`)."""
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
        row = {"path": str(path.relative_to(pki_dir)), "subject": cert.subject.rfc4514_string(),
               "names": names, "expires": expires.isoformat(timespec="seconds"), "days_left": (expires - _now()).days}
        permitted = name_constraints(path)
        if permitted is not None:
            row["permitted"] = permitted
        rows.append(row)
    return rows


def _ensure_leaf(pki_dir: Path, host_name: str, kind: str, names: list[str], usage) -> tuple[CertPair, bool]:
    ca = ca_paths(pki_dir)
    if not (ca.cert.exists() and ca.key.exists()):
        raise PkiError(f"no CA in {pki_dir}; create it with `deepfleet pki init` (or run `deepfleet demo`)")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    host_dir = Path(pki_dir) / "hosts" / host_name
    pair = CertPair(host_dir / f"{kind}.crt", host_dir / f"{kind}.key")
    wanted = sorted(set(names))
    permitted = name_constraints(ca.cert)
    refused = _outside(wanted, permitted) if permitted else []
    if refused:
        raise PkiError(f"{host_name}: the CA in {pki_dir} permits only {', '.join(permitted)} (NameConstraints), "
                       f"and this {kind} certificate would name {', '.join(repr(n) for n in refused)} outside them, "
                       "which every TLS client would refuse. Name the host (inventory name, ssh_hostname, "
                       "runtime_address, gateway_server_names) inside them, or make a new CA with more --permit")
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
