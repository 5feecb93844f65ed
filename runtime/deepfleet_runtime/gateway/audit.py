"""The audit log writer: hash-chained records, each durable before anyone relies on it.

Records go to a writer thread that appends every record waiting, calls fdatasync once for the
whole batch (group commit) and only then wakes the requests that wait for them (on storage where
fdatasync takes microseconds, a record with no waiter queued before it is written at once instead).
So when `append` returns, the record is on stable storage. A record queued with
`submit(record, wait=False)` (a request's end record: its "started" record is already durable, so
losing the end shows as "interrupted") waits for the next batch to share its fdatasync, or
DEFER_S at most; a failed write keeps it for the next batch, and close() writes it. Files rotate
by size and UTC day, the chain running on across them; retention removes the oldest files and
records that it did. The format is in auditchain.py and docs/gateway.md.
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
from .auditchain import (GENESIS, ChainBroken, chain_files, chain_line, checkpoint_message, file_name, parse_line,
                         verify_tail)
from .config import AuditSection

log = logging.getLogger(__name__)

# When nothing else waits and fdatasync has recently taken less than this (tmpfs, NVMe with power
# loss protection), a record is written on the caller's event loop: a thread hand-off costs more.
INLINE_SYNC_S = 200e-6
# A record nobody waits for is written with the next batch, or alone after this long.
DEFER_S = 0.1
# After a failed write, records nobody waits for are retried with every batch, and alone this often.
RETRY_S = 1.0


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
    """Appends records to the chain in `section.dir`; `append` returns once the record is durable.

    The chain's state (next seq, previous hash, file size) moves on only after a batch was written
    and fdatasync'ed. A failed write or fdatasync cuts the file back to the last durable record
    (never a partial line, never an unsynced page trusted again), fails every waiter of the batch
    and leaves `writable` False until a batch succeeds: requests are refused (503) meanwhile.
    """

    def __init__(self, section: AuditSection, signer: Ed25519Signer | None = None):
        self._section, self._signer = section, signer
        self._dir = Path(section.dir)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._fd: int | None = None
        self._path: Path | None = None
        self._reopen = False  # a cut-back failed: reopen and cut before the next write
        self._size, self._day = 0, None
        self._buffer: list[bytes] = []
        self._since_checkpoint = 0
        self.records_written = 0
        self.fsyncs = 0
        self.write_failures = 0
        self.writable = True
        self._sync_s = 1.0  # recent fdatasync time (moving average); starts slow: the thread measures first
        self._seq, self._prev = 0, GENESIS
        self._emitted = self._committed_items = 0
        self._recover()
        self._committed = self._state()
        # (body, future, loop); future None: nobody waits (deferred). _waited counts the others.
        self._pending: list[tuple[bytes, asyncio.Future | None, asyncio.AbstractEventLoop | None]] = []
        self._waited = 0
        self._deferred_since = 0.0  # when the oldest deferred record in _pending was queued (monotonic)
        self._wake = threading.Condition()
        self._io = threading.Lock()  # held by whoever writes a batch: the writer thread, or submit inline
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def submit(self, record: dict, wait: bool = True) -> asyncio.Future | None:
        """Queue `record` now (even if the caller is being cancelled); the future resolves once it
        is durable, or fails with AuditError. With wait=False there is no future: the record goes
        with the next batch (or alone within DEFER_S) and a failed write keeps it for the next."""
        body = encode_record(record)
        if not wait:
            with self._wake:
                if self._closing:
                    raise AuditError("the audit log is closed")
                if not self._pending:
                    self._deferred_since = time.monotonic()
                self._pending.append((body, None, None))
            return None
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with self._wake:
            if self._closing:
                raise AuditError("the audit log is closed")
            inline = not self._waited and self._sync_s < INLINE_SYNC_S and self._io.acquire(blocking=False)
            if not inline:
                self._pending.append((body, done, loop))
                self._waited += 1
                self._wake.notify()
                return done
            batch, self._pending = self._pending, []  # deferred records go along
        batch.append((body, done, None))
        try:  # no one else waits and fdatasync takes microseconds here: write it now, on this thread
            self._write_batch(batch, closing=False)
        finally:
            self._io.release()
        return done

    async def append(self, record: dict) -> None:
        """Add `record` (a JSON-able dict) to the chain; return when it is on stable storage."""
        await asyncio.shield(self.submit(record))

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
                while not (self._closing or self._waited):
                    # deferred records do not wake this thread (a wake per request costs CPU): it
                    # looks every DEFER_S, and writes those that waited that long
                    left = self._deferred_since + DEFER_S - time.monotonic() if self._pending else DEFER_S
                    if left <= 0:
                        break
                    self._wake.wait(left)
                batch, self._pending, self._waited = self._pending, [], 0
                closing = self._closing
            with self._io:
                self._write_batch(batch, closing)
            if closing:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                return

    def _write_batch(self, batch: list, closing: bool) -> None:
        """Write, fdatasync and acknowledge `batch` (holding self._io), or cut back and fail it."""
        error = None
        self._emitted = self._committed_items = 0
        try:
            if self._reopen:
                self._reopen_and_cut()
            for body, _, _ in batch:
                self._emit(body, request=True)
            if closing and self._signer and self._since_checkpoint:
                self._emit_checkpoint()
            self._flush()
            self.writable = True
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
            log.exception("audit log write failed")
            self.write_failures += 1
            self.writable = False
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            error = AuditError(f"the audit log cannot be written ({reason})")
            self._roll_back()
        kept = []
        for index, (body, done, loop) in enumerate(batch):
            outcome = None if index < self._committed_items else error
            if done is None:  # nobody waits for it: keep it for the next batch
                if outcome is not None:
                    kept.append((body, None, None))
            elif loop is None:  # written inline, on the waiter's own loop
                _resolve(done, outcome)
            else:
                loop.call_soon_threadsafe(_resolve, done, outcome)
        if kept:
            self._keep(kept, closing)

    def _keep(self, kept: list, closing: bool) -> None:
        """Queue records nobody waits for again, ahead of the rest, after a failed write."""
        if closing:
            log.error("%d audit record(s) could not be written before the log closed; their requests "
                      "verify as interrupted", len(kept))
            return
        log.error("%d audit record(s) nobody waits for are not yet durable; kept for the next write", len(kept))
        with self._wake:
            self._pending[:0] = kept
            self._deferred_since = time.monotonic() + RETRY_S - DEFER_S

    def _state(self) -> tuple:
        return (self._seq, self._prev, self._size, self._day, self._since_checkpoint, self._fd, self._path)

    def _roll_back(self) -> None:
        """Forget what was not made durable: in memory, and cut the file back to its durable size."""
        self._buffer.clear()
        (self._seq, self._prev, self._size, self._day, self._since_checkpoint, fd, self._path) = self._committed
        if self._fd is not None and self._fd != fd:
            os.close(self._fd)
        self._fd = fd
        if fd is None:
            return
        try:
            os.ftruncate(fd, self._size)
            os.fsync(fd)
        except OSError:
            log.exception("cannot cut the audit file back to %d bytes; will retry before the next write", self._size)
            os.close(fd)
            self._fd, self._reopen = None, True
            self._committed = self._state()

    def _reopen_and_cut(self) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        try:
            os.ftruncate(fd, self._size)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._reopen = fd, False
        self._committed = self._state()

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
            self._emitted += 1
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
        """Write and fdatasync the buffer; only then does the chain's state move on."""
        if self._buffer:
            _write_all(self._fd, b"".join(self._buffer))
            started = time.perf_counter()
            os.fdatasync(self._fd)
            self._sync_s = 0.8 * self._sync_s + 0.2 * (time.perf_counter() - started)
            self._buffer.clear()
            self.fsyncs += 1
        self.records_written += self._emitted - self._committed_items
        self._committed_items = self._emitted
        self._committed = self._state()

    def _rotate(self, day: str) -> None:
        if self._fd is not None:
            self._flush()
            os.close(self._fd)
            self._fd = None
            self._committed = self._state()  # a failed open below starts a new file next time
        previous = self._path
        path = self._dir / file_name(self._seq)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if not (path.exists() and path.stat().st_size == 0):  # left empty by a failed batch: reuse it
            flags |= os.O_EXCL
        self._fd, self._path = os.open(path, flags, 0o640), path
        fsync_dir(self._dir)
        self._size, self._day = 0, day
        self._committed = self._state()
        self._apply_retention(keep={path, previous})

    def _apply_retention(self, keep: set) -> None:
        """Remove the oldest files older than retention_days, oldest first, never a gap, never the
        current file or the one before it; the retention record is durable before any is removed."""
        if not self._section.retention_days:
            return
        cutoff = time.time() - self._section.retention_days * 86400
        files = chain_files(self._dir)
        doomed = []
        for _, path in files:
            if path in keep or path.stat().st_mtime >= cutoff:
                break
            doomed.append(path)
        if not doomed:
            return
        first_seq, first_path = files[len(doomed)]
        with open(first_path, "rb") as handle:
            _, first_prev, _, _ = parse_line(handle.readline(), first_path.name)
        self._emit(encode_record({"type": "retention", "time": utc_now_iso(), "removed": [p.name for p in doomed],
                                  "first_kept_seq": first_seq, "first_kept_prev": first_prev,
                                  "retention_days": self._section.retention_days}))
        self._flush()
        for path in doomed:
            path.unlink()
        fsync_dir(self._dir)
        log.info("audit retention removed %s", ", ".join(p.name for p in doomed))

    # --- start-up ------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Continue the chain from the last file on disk, checked whole (and linked to the file
        before it); cut a torn last line (never acknowledged)."""
        files = chain_files(self._dir)
        torn = _cut_torn_tail(files[-1][1]) if files else b""
        while files and files[-1][1].stat().st_size == 0:
            files.pop()[1].unlink()  # created, never written: the chain continues from the file before
        if files:
            path = files[-1][1]
            try:
                seq, digest = verify_tail(files)
            except ChainBroken as exc:
                raise AuditError(f"cannot continue the audit chain: {exc}; move {path} aside (keep it "
                                 "as evidence), then restart the gateway") from None
            self._seq, self._prev = seq + 1, digest
            self._fd, self._path = os.open(path, os.O_WRONLY | os.O_APPEND), path
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
