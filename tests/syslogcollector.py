"""A SIEM's syslog collector for tests: RFC 5425 (TLS) or RFC 6587 (plain TCP), octet-counted
frames, each parsed as RFC 5424, on 127.0.0.1 only, with a certificate of a CA that is not deepfleet's.

    with SyslogCollector(tls=TestCA(tmp).server_context("siem.test")) as collector:
        ... collector.port ...; collector.wait_for(5); collector.messages -> [Rfc5424Message]
    check_forwarded(collector.messages, audit_lines)   # what a SIEM checks: every record, its seq and hash
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from deepfleet_runtime.gateway.auditchain import GENESIS, HASH_MARK

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


def check_forwarded(messages: list[Rfc5424Message], lines: list[bytes]) -> None:
    """Every record arrived, each message carrying the record whole with its own seq/prev/hash (the MSG
    hashes to that hash): the SIEM verifies the chain and sees any gap. Delivery is at least once (TCP
    has no application acknowledgement: a record in flight at a restart is sent again) and files are
    read side by side, so the SIEM orders by seq and drops a repeated (host, seq, hash)."""
    by_seq = {}
    for message in messages:
        fields = message.sd["deepfleetAudit@32473"]  # siem_syslog_sd_id
        line = message.msg.encode()
        assert fields["hash"] == hashlib.sha256(line[:line.rindex(HASH_MARK)]).hexdigest()
        assert int(fields["seq"]) == int(line[len(b'{"seq":'):line.index(b",")])
        assert fields["prev"] == line[line.index(b'"prev":"') + 8:][:64].decode()
        assert fields["file"].startswith("audit-") and (message.app, message.msgid) == ("deepfleet-gateway", "audit")
        assert message.pri == 10 * 8 + 6  # authpriv.info
        assert by_seq.setdefault(int(fields["seq"]), line) == line  # a repeat is the same record
    assert [by_seq[seq] for seq in sorted(by_seq)] == lines
    prev = GENESIS
    for seq in sorted(by_seq):  # the chain, rebuilt from what the SIEM received
        assert by_seq[seq][by_seq[seq].index(b'"prev":"') + 8:][:64].decode() == prev
        prev = hashlib.sha256(by_seq[seq][:by_seq[seq].rindex(HASH_MARK)]).hexdigest()
    assert len(messages) <= len(lines) + 3, f"{len(messages)} messages for {len(lines)} records"
