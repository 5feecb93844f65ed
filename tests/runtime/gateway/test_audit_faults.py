"""The audit chain under write faults, on a real filesystem that fills up (a small tmpfs mounted
for the test): nothing half-written, nothing skipped, and the chain verifies after the disk has
room again."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import time

import pytest

from deepfleet_runtime.gateway import audit as audit_module
from deepfleet_runtime.gateway.audit import AuditError, AuditLog
from deepfleet_runtime.gateway.auditchain import chain_files, verify_chain
from deepfleet_runtime.gateway.config import AuditSection


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a real filesystem that answers ENOSPC (and partial writes) when full."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount, leave: int) -> None:
    """Fill the filesystem until fewer than `leave` bytes are free."""
    with open(mount / "filler", "ab") as handle:
        while True:
            stat = os.statvfs(mount)
            free = stat.f_bavail * stat.f_frsize
            if free <= leave:
                return
            try:
                handle.write(b"\0" * min(free - leave, 1 << 16))
                handle.flush()
            except OSError:
                return


def records(directory) -> list[dict]:
    return [json.loads(line) for _, path in chain_files(directory) for line in path.read_bytes().splitlines()]


async def append_all(log: AuditLog, bodies: list[dict]) -> list[bool]:
    """Append one at a time (each its own batch); True where the append was acknowledged."""
    acknowledged = []
    for body in bodies:
        try:
            await log.append(body)
            acknowledged.append(True)
        except AuditError:
            acknowledged.append(False)
    return acknowledged


def test_a_full_disk_never_breaks_the_chain(small_disk):
    section = AuditSection(dir=small_disk / "audit")
    bodies = [{"type": "request", "n": i, "prompt": "x" * 1500} for i in range(400)]

    async def run():
        log = AuditLog(section)
        try:
            first = await append_all(log, bodies[:20])
            fill(small_disk, leave=8 << 10)  # room for a few records, then partial writes and ENOSPC
            second = await append_all(log, bodies[20:60])
            seen["while full"] = (getattr(log, "writable", None), getattr(log, "write_failures", None))
            (small_disk / "filler").unlink()  # an operator makes room
            third = await append_all(log, bodies[60:80])
            seen["after"] = getattr(log, "writable", None)
        finally:
            log.close()
        return first + second + third

    seen = {}
    acknowledged = asyncio.run(run())
    assert all(acknowledged[:20]) and not all(acknowledged[20:60]) and all(acknowledged[60:80])
    report = verify_chain(section.dir)  # no gap, no partial line, no record repeated
    written = [r["n"] for r in records(section.dir) if r["type"] == "request"]
    assert written == [n for n, ok in enumerate(acknowledged) if ok]  # exactly the acknowledged ones
    assert report.records == len(written)
    writable, failures = seen["while full"]
    assert writable is False and failures > 0 and seen["after"] is True  # failed closed, and it showed
    # and a restarted writer continues the same chain
    asyncio.run(append_all(AuditLog(section), [{"type": "request", "n": "after restart"}]))
    assert verify_chain(section.dir).records == len(written) + 1


def test_a_failed_fdatasync_is_never_trusted(tmp_path, monkeypatch):
    """fsyncgate: after a failed fdatasync the kernel may have dropped the dirty pages, so the
    unsynced records must go (cut back), not be taken as written by the next successful fsync."""
    section = AuditSection(dir=tmp_path / "audit")
    real = os.fdatasync
    calls = {"n": 0}

    def flaky(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(audit_module.os, "fdatasync", flaky)

    async def run():
        log = AuditLog(section)
        try:
            return await append_all(log, [{"type": "request", "n": i} for i in range(5)])
        finally:
            log.close()

    acknowledged = asyncio.run(run())
    assert acknowledged == [True, True, False, True, True]
    assert [r["n"] for r in records(section.dir)] == [0, 1, 3, 4]
    verify_chain(section.dir)


def test_start_up_checks_the_whole_last_file(tmp_path):
    section = AuditSection(dir=tmp_path / "audit")

    async def write(n):
        log = AuditLog(section)
        try:
            await append_all(log, [{"type": "request", "n": i} for i in range(n)])
        finally:
            log.close()

    asyncio.run(write(5))
    path = chain_files(section.dir)[-1][1]
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"n":2', b'"n":7')  # edited in the middle; the last line is intact
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 3"):
        AuditLog(section)


def test_retention_after_a_long_idle_period_keeps_the_chain(tmp_path):
    """Every file is older than retention_days: the one just closed stays, with the chain's head."""
    section = AuditSection(dir=tmp_path / "audit", rotate_bytes=600, retention_days=7)

    async def write(n, tag):
        log = AuditLog(section)
        try:
            await append_all(log, [{"type": "request", "n": f"{tag}{i}"} for i in range(n)])
        finally:
            log.close()

    asyncio.run(write(10, "a"))
    for _, path in chain_files(section.dir):
        os.utime(path, (time.time() - 30 * 86400,) * 2)  # a month without traffic
    last_before = records(section.dir)[-1]
    asyncio.run(write(1, "b"))  # the first rotation after the idle month
    report = verify_chain(section.dir)
    kept = records(section.dir)
    assert report.retention and last_before in kept  # the file before the new one, with the chain's head
    assert kept[-1]["n"] == "b0"
    asyncio.run(write(6, "c"))  # later rotations remove it in turn, always accounted for
    assert [r["n"] for r in records(section.dir) if r["type"] == "request"][-1] == "c5"
    verify_chain(section.dir)
