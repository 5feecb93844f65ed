"""End records that are not awaited (`submit(record, wait=False)`): they share the next batch's
fdatasync, are durable within DEFER_S when no batch comes, are retried after a failed write (never
dropped silently) and are written at close."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time

from deepfleet_runtime.gateway import audit as audit_module
from deepfleet_runtime.gateway.audit import AuditLog
from deepfleet_runtime.gateway.auditchain import chain_files, verify_chain
from deepfleet_runtime.gateway.config import AuditSection


def on_disk(directory) -> list[dict]:
    return [json.loads(line) for _, path in chain_files(directory) for line in path.read_bytes().splitlines()]


def counting_fdatasync(monkeypatch, fail_at: set[int] = frozenset()) -> dict:
    real, calls = os.fdatasync, {"n": 0}

    def counted(fd):
        calls["n"] += 1
        if calls["n"] in fail_at:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(audit_module.os, "fdatasync", counted)
    return calls


def test_a_deferred_record_shares_the_next_awaited_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_module, "DEFER_S", 30.0)  # no timer: only the next batch writes it
    calls = counting_fdatasync(monkeypatch)
    section = AuditSection(dir=tmp_path / "audit")

    async def run():
        log = AuditLog(section)
        try:
            await log.append({"type": "started", "n": 0})
            synced = calls["n"]
            assert log.submit({"type": "request", "n": 1}, wait=False) is None  # returns at once
            await asyncio.sleep(0.2)
            assert [r["n"] for r in on_disk(section.dir)] == [0] and calls["n"] == synced  # not written yet
            await log.append({"type": "started", "n": 2})
            assert [r["n"] for r in on_disk(section.dir)] == [0, 1, 2]
            assert calls["n"] == synced + 1  # one fdatasync for both
        finally:
            log.close()

    asyncio.run(run())
    assert verify_chain(section.dir).records == 3


def test_a_deferred_record_alone_is_durable_soon(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_module, "DEFER_S", 0.05)
    section = AuditSection(dir=tmp_path / "audit")

    async def run():
        log = AuditLog(section)
        try:
            log.submit({"type": "request", "n": 0}, wait=False)
            deadline = time.monotonic() + 5
            while not log.records_written and time.monotonic() < deadline:  # counted once synced
                await asyncio.sleep(0.01)
            assert log.records_written == 1 and [r["n"] for r in on_disk(section.dir)] == [0]
        finally:
            log.close()

    asyncio.run(run())


def test_a_deferred_record_whose_write_failed_is_retried_not_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_module, "DEFER_S", 30.0)
    section = AuditSection(dir=tmp_path / "audit")

    async def run():
        log = AuditLog(section)
        try:
            await log.append({"type": "started", "n": 0})
            counting_fdatasync(monkeypatch, fail_at={1})  # the next batch fails
            log.submit({"type": "request", "n": 1}, wait=False)
            try:
                await log.append({"type": "started", "n": 2})
                raise AssertionError("the failed batch was acknowledged")
            except audit_module.AuditError:
                pass
            assert log.writable is False and log.write_failures == 1  # it showed: later requests fail closed
            assert [r["n"] for r in on_disk(section.dir)] == [0]  # cut back
            await log.append({"type": "started", "n": 3})  # the disk is back: the deferred one goes first
            assert [r["n"] for r in on_disk(section.dir)] == [0, 1, 3] and log.writable is True
        finally:
            log.close()

    asyncio.run(run())
    verify_chain(section.dir)


def test_close_writes_deferred_records(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_module, "DEFER_S", 30.0)
    section = AuditSection(dir=tmp_path / "audit")

    async def run():
        log = AuditLog(section)
        await log.append({"type": "started", "n": 0})
        log.submit({"type": "request", "n": 1}, wait=False)
        log.close()

    asyncio.run(run())
    assert [r["n"] for r in on_disk(section.dir)] == [0, 1]


def test_with_fast_storage_the_next_record_takes_deferred_ones_along_inline(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_module, "DEFER_S", 30.0)
    monkeypatch.setattr(audit_module, "INLINE_SYNC_S", 10.0)  # every fdatasync counts as fast
    section = AuditSection(dir=tmp_path / "audit")

    async def run():
        log = AuditLog(section)
        try:
            await log.append({"type": "started", "n": 0})  # measures fdatasync
            log._sync_s = 0.0
            log.submit({"type": "request", "n": 1}, wait=False)
            done = log.submit({"type": "started", "n": 2})
            assert done.done()  # written on this thread, with the deferred record before it
            assert [r["n"] for r in on_disk(section.dir)] == [0, 1, 2]
        finally:
            log.close()

    asyncio.run(run())
    verify_chain(section.dir)
