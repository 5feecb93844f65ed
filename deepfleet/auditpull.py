"""`deepfleet audit pull`: copy every gateway's audit log to the control machine and verify it end
to end, so that the chain's head is anchored off the host.

Per gateway, `.deepfleet/audit/<host>/` keeps a copy of every audit file ever pulled (host
retention never removes them here) and `head.json`, the last record seen. A pull lists the
host's files with the SHA-256 of the part already copied, fetches only what is new, and then
verifies the whole local copy (hash chain and, with the host's public key, signed checkpoints).
Findings, each of which fails the pull:

- a copied part that changed on the host (a record edited, or the chain restarted from record 0);
- a file shorter on the host than here, or gone from the host while newer files remain
  without a retention record (the tail cut off, the directory wiped);
- a chain that does not verify across old and new records (a gap since the last pull).

What a host shows is kept as it was found: a changed file is stored beside the copy, never over it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepfleet_runtime.gateway.auditchain import ChainBroken, chain_files, verify_chain

from .atomicfile import write_atomic

# Run on the gateway (as root, with its venv's python): the audit files, their sizes, and the
# SHA-256 of each one's first N bytes for the N already copied (argv: dir, {name: N} as JSON).
LIST_SCRIPT = r"""
import hashlib, json, os, re, sys
directory, known = sys.argv[1], json.loads(sys.argv[2])
found = {}
for name in sorted(os.listdir(directory)):
    if not re.match(r"^audit-\d{12}\.jsonl$", name):
        continue
    path = os.path.join(directory, name)
    entry = {"size": os.path.getsize(path)}
    if name in known:
        digest, left = hashlib.sha256(), min(known[name], entry["size"])
        with open(path, "rb") as handle:
            while left:
                block = handle.read(min(left, 1 << 20))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
        entry["prefix_sha256"] = digest.hexdigest()
    found[name] = entry
print(json.dumps(found))
"""
# argv: dir, name, offset: the file's bytes from offset on, to stdout
FETCH_SCRIPT = r"""
import os, shutil, sys
with open(os.path.join(sys.argv[1], sys.argv[2]), "rb") as handle:
    handle.seek(int(sys.argv[3]))
    shutil.copyfileobj(handle, sys.stdout.buffer)
"""


class AuditSource:
    """Where a gateway's audit directory is read: `command` prefixes a python invocation (over
    ssh with sudo for a host, or nothing for a local directory in tests)."""

    def __init__(self, name: str, command: list[str], python: str, directory: str, timeout: float = 600):
        self.name, self._command, self._python, self.directory = name, command, python, directory
        self._timeout = timeout

    def _run(self, script: str, *args: str) -> bytes:
        if self._command:  # over ssh: one shell word per argument
            argv = [*self._command, shlex.join([self._python, "-c", script, *args])]
        else:
            argv = [self._python, "-c", script, *args]
        result = subprocess.run(argv, capture_output=True, timeout=self._timeout)
        if result.returncode:
            raise RuntimeError(f"{self.name}: reading the audit log failed: "
                               f"{result.stderr.decode(errors='replace').strip()[-400:]}")
        return result.stdout

    def listing(self, known: dict[str, int]) -> dict[str, dict]:
        return json.loads(self._run(LIST_SCRIPT, self.directory, json.dumps(known)))

    def fetch(self, name: str, offset: int) -> bytes:
        return self._run(FETCH_SCRIPT, self.directory, name, str(offset))


@dataclass
class PullReport:
    host: str
    ok: bool = True
    findings: list[str] = field(default_factory=list)
    new_records: int = 0
    records: int = 0
    last_seq: int | None = None
    signed_through: int | None = None
    interrupted: list[str] = field(default_factory=list)

    def finding(self, text: str) -> None:
        self.ok = False
        self.findings.append(text)


def pull(source: AuditSource, archive: Path, public_key=None) -> PullReport:
    """Bring `archive` (this gateway's local copy) up to date from `source`; verify it whole."""
    archive.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = PullReport(source.name)
    head_path = archive / "head.json"
    head = json.loads(head_path.read_text()) if head_path.exists() else None
    local = {path.name: path for _, path in chain_files(archive)}
    remote = source.listing({name: path.stat().st_size for name, path in local.items()})
    for name, path in local.items():
        entry = remote.get(name)
        size = path.stat().st_size
        if entry is None:
            if not _removed_by_retention(name, remote):
                report.finding(f"{name} is gone from the host (not by retention: newer copied files remain "
                               "or none are left): the log was cut or wiped")
            continue
        if entry["prefix_sha256"] != _sha256_prefix(path, min(size, entry["size"])):
            evidence = archive / f"changed-{int(time.time())}-{name}"
            evidence.write_bytes(source.fetch(name, 0))
            report.finding(f"{name} changed on the host after it was copied (records edited, or the chain "
                           f"restarted); the host's version is kept as {evidence.name}")
        elif entry["size"] < size:
            report.finding(f"{name} is shorter on the host ({entry['size']} bytes) than copied ({size}): "
                           "its tail was cut off")
    if report.ok:
        for name, entry in sorted(remote.items()):
            have = local[name].stat().st_size if name in local else 0
            if entry["size"] > have:
                report.new_records += _append(archive / name, have, source.fetch(name, have))
    if not local and not remote:
        report.finding("the host has no audit files")
        return report
    try:
        verified = verify_chain(archive, public_key)
    except ChainBroken as exc:
        report.finding(f"the copied chain does not verify: {exc}")
        return report
    report.records, report.last_seq = verified.records, verified.last_seq
    report.signed_through, report.interrupted = verified.signed_through, verified.interrupted
    if head and (verified.last_seq is None or verified.last_seq < head["last_seq"]):
        report.finding(f"the chain ends at record {verified.last_seq}, before record {head['last_seq']} "
                       "seen at the last pull")
    if report.ok:
        write_atomic(head_path, json.dumps({"last_seq": verified.last_seq, "last_hash": verified.last_hash,
                                            "pulled": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
    return report


def _removed_by_retention(name: str, remote: dict) -> bool:
    """A copied file may go from the host only by retention: older than every file still there."""
    return bool(remote) and name < min(remote)


def _sha256_prefix(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(length))
    return digest.hexdigest()


def _append(path: Path, offset: int, data: bytes) -> int:
    """Add whole records (up to the last newline: the host may be writing the next) to the copy;
    return how many. The copy is replaced atomically, never left half-written."""
    whole = data[:data.rfind(b"\n") + 1]
    if not whole:
        return 0
    old = path.read_bytes()[:offset] if path.exists() else b""
    write_atomic(path, old + whole, mode=0o600)
    return whole.count(b"\n")


def gateway_source(gateway) -> AuditSource:
    """The audit directory of a fleet gateway (deepfleet/fleet.py FleetHost), read over ssh as root."""
    settings = gateway.settings
    directory = settings.get("gateway_audit_dir") or f"{settings['gateway_state_dir']}/audit"
    return AuditSource(gateway.name, [*gateway.ssh, *(["sudo", "-n"] if gateway.sudo else [])],
                       f"{settings['deepfleet_home']}/venv/bin/python", directory)


def public_key_of(pki_dir: Path, host: str):
    """The gateway's audit signing public key (deepfleet/pki.py), or None if it has none."""
    path = Path(pki_dir) / "hosts" / host / "audit-signing.pub"
    if not path.exists():
        return None
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_public_key(path.read_bytes())
