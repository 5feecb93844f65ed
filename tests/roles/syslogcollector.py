"""A SIEM's syslog collector for tests: RFC 5425 (TLS) or RFC 6587 (plain TCP), octet-counted
frames, each parsed as RFC 5424, on 127.0.0.1 only, with a certificate of a CA that is not deepfleet's.

    with SyslogCollector(tls=ca.server_context("siem.test")) as collector:
        ... collector.port ...; collector.wait_for(5); collector.messages -> [Rfc5424Message]
"""

from __future__ import annotations

import datetime
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# RFC 5424 section 6: HEADER SP STRUCTURED-DATA [SP MSG]
HEADER = re.compile(r"^<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) "
                    r"(?P<msgid>\S+) ")
SD_ELEMENT = re.compile(r'\[(?P<id>[^ \]=]+)(?P<params>(?: [^ =\]]+="(?:[^"\\\]]|\\.)*")*)\]')
SD_PARAM = re.compile(r'([^ =\]]+)="((?:[^"\\\]]|\\.)*)"')


@dataclass
class Rfc5424Message:
    pri: int
    timestamp: str
    hostname: str
    app: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: str


def parse_rfc5424(frame: str) -> Rfc5424Message:
    """One syslog message, strictly as RFC 5424 writes it; ValueError otherwise."""
    header = HEADER.match(frame)
    if not header:
        raise ValueError(f"no RFC 5424 header: {frame[:120]!r}")
    rest, sd = frame[header.end():], {}
    if rest.startswith("-"):
        rest = rest[1:]
    else:
        while rest.startswith("["):
            element = SD_ELEMENT.match(rest)
            if not element:
                raise ValueError(f"bad structured data: {rest[:200]!r}")
            sd[element.group("id")] = dict(SD_PARAM.findall(element.group("params")))
            rest = rest[element.end():]
    if rest and not rest.startswith(" "):
        raise ValueError(f"no space before MSG: {rest[:80]!r}")
    msg = rest[1:].removeprefix("\ufeff")
    return Rfc5424Message(int(header.group("pri")), header.group("timestamp"), header.group("hostname"),
                          header.group("app"), header.group("msgid"), sd, msg)


class TestCA:
    """A CA of the test's own (the "hospital's"), unrelated to deepfleet's PKI."""

    __test__ = False

    def __init__(self, directory: Path, name: str = "Hospital Test Root CA"):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = directory / "hospital-ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, dns_name: str, ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """(certificate, key) files for a server named `dns_name`."""
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names = [x509.DNSName(dns_name), *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)]
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.directory / f"{dns_name}.crt", self.directory / f"{dns_name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def server_context(self, dns_name: str, ips: tuple[str, ...] = ()) -> ssl.SSLContext:
        cert, key = self.issue(dns_name, ips)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context


class SyslogCollector:
    """Accepts connections on 127.0.0.1 and keeps every octet-counted frame, parsed."""

    def __init__(self, tls: ssl.SSLContext | None = None, port: int = 0):
        self.tls = tls
        self.messages: list[Rfc5424Message] = []
        self.errors: list[str] = []  # frames that were no RFC 5424 message
        self.connections = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", port))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> SyslogCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(5)

    def wait_for(self, count: int, timeout: float = 30) -> list[Rfc5424Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.1)
        raise AssertionError(f"the collector received {len(self.messages)} of {count} messages in {timeout} s")

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            if self.tls:
                connection = self.tls.wrap_socket(connection, server_side=True)
            stream = connection.makefile("rb")
            while True:
                length = b""
                while (char := stream.read(1)) not in (b" ", b""):
                    length += char
                if not length:
                    return
                frame = stream.read(int(length)).decode()
                try:
                    parsed = parse_rfc5424(frame)
                except ValueError as exc:
                    self.errors.append(str(exc))
                    continue
                with self._lock:
                    self.messages.append(parsed)
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            connection.close()
