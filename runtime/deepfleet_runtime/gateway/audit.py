"""The audit log writer: one hash-chained record per request, durable before the response completes.

Records go to a writer thread that appends every record waiting, calls fdatasync once for the
whole batch (group commit) and only then wakes the requests that wait for them. So when
`append` returns, the record is on stable storage: a response is completed only after that (for
a stream, its final `data: [DONE]` is held back until then), and a crash, `kill -9` or power
loss after a response completed loses no record of it. Files rotate by size and UTC day, the
chain running on across them; retention removes the oldest files and records that it did.
The format is in auditchain.py and docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from ..atomicfile import fsync_dir
from .auditchain import GENESIS, ChainBroken, parse_line, chain_files, chain_line, checkpoint_message, file_name
from .config import AuditSection

log = logging.getLogger(__name__)


class AuditError(RuntimeError):
    """The audit log cannot be written (or read at start); requests are refused until it can."""


def encode_record(record: dict) -> bytes:
    """A record's JSON body (compact; UTF-8, or ASCII escapes when the text is not valid Unicode)."""
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # lone surrogates: keep them, escaped, in pure ASCII
        return json.dumps(record, separators=(",", ":")).encode()


def utc_now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Ed25519Signer:
    """Signs checkpoints with an Ed25519 private key (PEM, PKCS8)."""

    def __init__(self, key_path: Path):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditError(f"{key_path} is not an Ed25519 private key")
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._key.sign(message)).decode()


class AuditLog:
    """Appends records to the chain in `section.dir`; `append` returns once the record is durable."""

    def __init__(self, section: AuditSection, signer: Ed25519Signer | None = None):
        self._section, self._signer = section, signer
        self._dir = Path(section.dir)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._fd: int | None = None
        self._size, self._day = 0, None
        self._buffer: list[bytes] = []
        self._since_checkpoint = 0
        self.records_written = 0
        self.fsyncs = 0
        self.write_failures = 0  # batches whose write or sync failed
        self._seq, self._prev = 0, GENESIS
        self._recover()
        self._pending: list[tuple[bytes, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    async def append(self, record: dict) -> None:
        """Add `record` (a JSON-able dict) to the chain; return when it is on stable storage."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        body = encode_record(record)
        with self._wake:
            if self._closing:
                raise AuditError("the audit log is closed")
            self._pending.append((body, done, loop))
            self._wake.notify()
        await asyncio.shield(done)

    def close(self) -> None:
        """Write what is pending (and a last checkpoint), then stop the writer."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                batch, self._pending = self._pending, []
                closing = self._closing
            error = None
            try:
                for body, _, _ in batch:
                    self._emit(body, request=True)
                if closing and self._signer and self._since_checkpoint:
                    self._emit_checkpoint()
                self._flush()
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                log.exception("audit log write failed")
                self.write_failures += 1
                error = AuditError(f"audit log write failed: {exc}")
                self._buffer.clear()
            for _, done, loop in batch:
                loop.call_soon_threadsafe(_resolve, done, error)
            if closing:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                return

    def _emit(self, body: bytes, request: bool = False) -> None:
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        line_estimate = len(body) + 170
        if self._fd is None or (self._size and (self._size + line_estimate > self._section.rotate_bytes
                                                or (self._section.rotate_daily and day != self._day))):
            self._rotate(day)
        line, digest = chain_line(self._seq, self._prev, body)
        self._buffer.append(line)
        self._size += len(line)
        self._seq, self._prev = self._seq + 1, digest
        if request:
            self.records_written += 1
            self._since_checkpoint += 1
            if self._signer and self._since_checkpoint >= self._section.checkpoint_every:
                self._emit_checkpoint()

    def _emit_checkpoint(self) -> None:
        covers_seq, covers_hash = self._seq - 1, self._prev
        self._emit(encode_record({"type": "checkpoint", "time": utc_now_iso(), "covers_seq": covers_seq,
                                  "covers_hash": covers_hash, "key_id": self._signer.key_id,
                                  "signature": self._signer.sign(checkpoint_message(covers_seq, covers_hash))}))
        self._since_checkpoint = 0

    def _flush(self) -> None:
        if self._buffer:
            _write_all(self._fd, b"".join(self._buffer))
            self._buffer.clear()
            os.fdatasync(self._fd)
            self.fsyncs += 1

    def _rotate(self, day: str) -> None:
        if self._fd is not None:
            self._flush()
            os.close(self._fd)
        path = self._dir / file_name(self._seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        fsync_dir(self._dir)
        self._size, self._day = 0, day
        removed = self._apply_retention(keep=path)
        if removed:
            first_seq, first_path = chain_files(self._dir)[0]
            with open(first_path, "rb") as handle:
                _, first_prev, _, _ = parse_line(handle.readline(), first_path.name)
            self._emit(encode_record({"type": "retention", "time": utc_now_iso(), "removed": removed,
                                      "first_kept_seq": first_seq, "first_kept_prev": first_prev,
                                      "retention_days": self._section.retention_days}))

    def _apply_retention(self, keep: Path) -> list[str]:
        """Remove the oldest files older than retention_days, oldest first, never a gap."""
        if not self._section.retention_days:
            return []
        cutoff = time.time() - self._section.retention_days * 86400
        removed = []
        for _, path in chain_files(self._dir):
            if path == keep or path.stat().st_mtime >= cutoff:
                break
            path.unlink()
            removed.append(path.name)
        if removed:
            fsync_dir(self._dir)
            log.info("audit retention removed %s", ", ".join(removed))
        return removed

    # --- start-up ------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Continue the chain from the last record on disk; cut a torn last line (never acknowledged)."""
        files = chain_files(self._dir)
        torn = _cut_torn_tail(files[-1][1]) if files else b""
        while files and files[-1][1].stat().st_size == 0:
            files.pop()[1].unlink()  # created, never written: the chain continues from the file before
        if files:
            path = files[-1][1]
            try:
                seq, _, digest, _ = parse_line(_last_line(path), f"{path.name} (last record)")
            except ChainBroken as exc:
                raise AuditError(f"cannot continue the audit chain: {exc}; move {path} aside (keep it "
                                 "as evidence), then restart the gateway") from None
            self._seq, self._prev = seq + 1, digest
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._size = path.stat().st_size
            self._day = time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))
        if torn:
            log.warning("the audit log ended in a torn record (%d bytes, never acknowledged); cut it", len(torn))
            self._emit(encode_record({"type": "recovered", "time": utc_now_iso(), "cut_bytes": len(torn),
                                      "cut_sha256": hashlib.sha256(torn).hexdigest()}))
            self._flush()


def _resolve(done: asyncio.Future, error: Exception | None) -> None:
    if not done.done():
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _cut_torn_tail(path: Path) -> bytes:
    """Truncate bytes after the last newline (a record whose write never finished); return them."""
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep == size:
            return b""
        handle.seek(keep)
        torn = handle.read()
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        return torn


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
