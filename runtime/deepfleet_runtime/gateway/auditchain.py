"""The audit log's format: hash-chained JSON Lines records, and their verification.

Every line is one JSON object that begins with `{"seq":N,"prev":"<hex>",` and ends with
`,"hash":"<hex>"}`. `hash` is the SHA-256 of the line's UTF-8 bytes up to (not including)
`,"hash":"`; `prev` is the previous record's `hash` (64 zeros for the first record ever). So a
verifier needs no canonical JSON: it hashes bytes as they are. Files are named
`audit-<seq of their first record, 12 digits>.jsonl`; the chain runs on across files.
docs/gateway.md describes the record types and a verifier in a few lines of plain Python.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

GENESIS = "0" * 64
HASH_MARK = b',"hash":"'
FILE_PATTERN = re.compile(r"^audit-(\d{12})\.jsonl$")
CHECKPOINT_PREFIX = "deepfleet-audit-checkpoint:v1"


def file_name(first_seq: int) -> str:
    return f"audit-{first_seq:012d}.jsonl"


def chain_line(seq: int, prev: str, body: bytes) -> tuple[bytes, str]:
    """The line (with its newline) for a record whose other fields are the JSON object `body`,
    and the record's hash."""
    inner = body[1:-1]
    head = b'{"seq":%d,"prev":"%s"' % (seq, prev.encode()) + (b"," + inner if inner else b"")
    digest = hashlib.sha256(head).hexdigest()
    return head + HASH_MARK + digest.encode() + b'"}\n', digest


def checkpoint_message(seq: int, record_hash: str) -> bytes:
    """The bytes an Ed25519 checkpoint signs: the position and hash of the record it vouches for."""
    return f"{CHECKPOINT_PREFIX}:{seq}:{record_hash}".encode()


def chain_files(directory: Path) -> list[tuple[int, Path]]:
    """The audit files in `directory`, in chain order."""
    found = []
    for path in Path(directory).iterdir():
        match = FILE_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


class ChainBroken(Exception):
    """Verification failed; the message names the file, line and record."""


@dataclass
class VerifyReport:
    records: int = 0
    files: int = 0
    first_seq: int | None = None
    first_prev: str | None = None
    last_seq: int | None = None
    last_hash: str = GENESIS
    checkpoints: int = 0
    signed_through: int | None = None  # last seq covered by a verified checkpoint signature
    retention: list[dict] = field(default_factory=list)
    # request_id -> seq of a "started" record with no end record (yet): the gateway stopped during
    # the request (crash, kill -9, power loss), or, in a live log, the request is still running
    open_requests: dict[str, int] = field(default_factory=dict)
    ended: int = 0  # end records that followed a "started" record

    @property
    def interrupted(self) -> list[str]:
        return list(self.open_requests)


def verify_chain(directory: Path, public_key=None) -> VerifyReport:
    """Check every record of the chain in `directory`; raise ChainBroken at the first fault.

    With an Ed25519 `public_key` (cryptography object), checkpoint signatures are checked too.
    A request's "started" record without its end record is reported (`interrupted`), not a fault.
    """
    report = VerifyReport()
    files = chain_files(directory)
    if not files:
        raise ChainBroken(f"no audit files (audit-<seq>.jsonl) in {directory}")
    for first_seq, path in files:
        _verify_file(path, first_seq, report, public_key)
    _check_start(report, files[0][1].name)
    return report


def verify_tail(files: list[tuple[int, Path]]) -> tuple[int, str]:
    """(seq, hash) of the chain's last record, after checking the whole last file and that it
    follows the file before it: what a writer checks before it continues the chain."""
    report = VerifyReport()
    if len(files) > 1:
        path = files[-2][1]
        seq, _, digest, _ = parse_line(_last_line(path), f"{path.name} (last record)")
        report.last_seq, report.last_hash, report.first_seq = seq, digest, 0
    _verify_file(files[-1][1], files[-1][0], report, None)
    return report.last_seq, report.last_hash


def _verify_file(path: Path, first_seq: int, report: VerifyReport, public_key) -> None:
    report.files += 1
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path.name} line {number}"
            seq, record_prev, digest, record = parse_line(raw, where)
            if report.first_seq is None:
                report.first_seq, report.first_prev = seq, record_prev
                expected_seq, prev = seq, record_prev
            else:
                expected_seq, prev = report.last_seq + 1, report.last_hash
            if number == 1 and seq != first_seq:
                raise ChainBroken(f"{where}: file name says it starts at record {first_seq}, "
                                  f"but its first record is {seq}")
            if seq != expected_seq:
                what = "missing or reordered" if seq > expected_seq else "repeated or reordered"
                raise ChainBroken(f"{where}: expected record {expected_seq}, found {seq} "
                                  f"(records {what})")
            if record_prev != prev:
                raise ChainBroken(f"{where}: record {seq} does not follow record {seq - 1} "
                                  "(its prev is not that record's hash: edited, removed or reordered)")
            _check_record(record, public_key, report, where)
            report.records += 1
            report.last_seq, report.last_hash = seq, digest


def parse_line(raw: bytes, where: str) -> tuple[int, str, str, dict]:
    """(seq, prev, hash, record) of one line (with its newline); ChainBroken if it is not intact."""
    if not raw.endswith(b"\n"):
        raise ChainBroken(f"{where}: incomplete last line (no newline)")
    line = raw[:-1]
    cut = line.rfind(HASH_MARK)
    if cut < 0 or not line.endswith(b'"}'):
        raise ChainBroken(f"{where}: not an audit record (no trailing hash)")
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise ChainBroken(f"{where}: not valid JSON ({exc})") from None
    digest = hashlib.sha256(line[:cut]).hexdigest()
    if not isinstance(record, dict) or record.get("hash") != digest:
        raise ChainBroken(f"{where}: hash mismatch: the record was edited")
    if not isinstance(record.get("seq"), int) or not isinstance(record.get("prev"), str):
        raise ChainBroken(f"{where}: record without seq/prev")
    return record["seq"], record["prev"], digest, record


def _check_record(record: dict, public_key, report: VerifyReport, where: str) -> None:
    """Type-specific checks; a checkpoint vouches for the record right before it."""
    kind = record.get("type")
    if kind == "started":
        report.open_requests[record.get("request_id")] = record["seq"]
    elif kind == "request":
        if report.open_requests.pop(record.get("request_id"), None) is not None:
            report.ended += 1
    elif kind == "retention":
        report.retention.append(record)
    elif kind == "checkpoint":
        report.checkpoints += 1
        covers = record.get("covers_seq")
        if (covers, record.get("covers_hash")) != (record["seq"] - 1, record["prev"]):
            raise ChainBroken(f"{where}: checkpoint does not name the record before it")
        if public_key is not None:
            from cryptography.exceptions import InvalidSignature

            try:
                public_key.verify(base64.b64decode(record.get("signature", "")),
                                  checkpoint_message(covers, record.get("covers_hash", "")))
            except (InvalidSignature, ValueError) as exc:
                raise ChainBroken(f"{where}: checkpoint signature does not verify with this key "
                                  f"({type(exc).__name__})") from None
            report.signed_through = covers


def _check_start(report: VerifyReport, first_file: str) -> None:
    """The chain starts at record 0, or where a retention record says older files were removed."""
    if report.first_seq == 0:
        return
    for retention in report.retention:
        if (retention.get("first_kept_seq"), retention.get("first_kept_prev")) == (
                report.first_seq, report.first_prev):
            return
    raise ChainBroken(f"{first_file}: the chain starts at record {report.first_seq}; records "
                      f"0-{report.first_seq - 1} are missing and no retention record accounts for them")


def _last_line(path: Path) -> bytes:
    """The last line of a non-empty file that ends with a newline."""
    with open(path, "rb") as handle:
        end, tail = handle.seek(0, os.SEEK_END) - 1, b""
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            tail = handle.read(end - start) + tail
            newline = tail.rfind(b"\n")
            if newline >= 0:
                return tail[newline + 1:] + b"\n"
            end = start
        return tail + b"\n"
