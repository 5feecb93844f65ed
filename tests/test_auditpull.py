"""`deepfleet audit pull`: the copy on the control machine anchors each gateway's chain, so a cut
tail, a wiped and restarted log, an edited record or a missing file is found at the next pull.
The host side is a real audit directory written by the gateway's AuditLog; the same scripts run
as over ssh, here without it."""

from __future__ import annotations

import asyncio
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deepfleet.auditpull import AuditSource, pull
from deepfleet_runtime.gateway.audit import AuditLog, Ed25519Signer
from deepfleet_runtime.gateway.auditchain import chain_files
from deepfleet_runtime.gateway.config import AuditSection


def write(section: AuditSection, count: int, signer=None, tag: str = "r") -> None:
    async def run():
        log = AuditLog(section, signer)
        try:
            for i in range(count):
                await log.append({"type": "request", "n": f"{tag}{i}"})
        finally:
            log.close()

    asyncio.run(run())


def source(section: AuditSection) -> AuditSource:
    return AuditSource("gw1", [], sys.executable, str(section.dir))


def test_pulls_copy_the_log_and_continue_it(tmp_path):
    section = AuditSection(dir=tmp_path / "host", rotate_bytes=2000)
    write(section, 10)
    first = pull(source(section), tmp_path / "copy")
    assert first.ok and first.records == 10 and first.new_records == 10
    write(section, 30, tag="s")
    second = pull(source(section), tmp_path / "copy")
    assert second.ok and second.records == 40 and second.new_records == 30, second.findings
    assert [p.read_bytes() for _, p in chain_files(section.dir)] == [p.read_bytes() for _, p in chain_files(tmp_path / "copy")]
    assert pull(source(section), tmp_path / "copy").new_records == 0


def test_a_cut_tail_is_found(tmp_path):
    section = AuditSection(dir=tmp_path / "host")
    write(section, 10)
    assert pull(source(section), tmp_path / "copy").ok
    path = chain_files(section.dir)[-1][1]
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:6]))  # the last four records cut off: the host's chain still verifies
    report = pull(source(section), tmp_path / "copy")
    assert not report.ok and "shorter on the host" in report.findings[0]


def test_a_wiped_and_restarted_log_is_found(tmp_path):
    section = AuditSection(dir=tmp_path / "host")
    write(section, 10)
    assert pull(source(section), tmp_path / "copy").ok
    for _, path in chain_files(section.dir):
        path.unlink()
    write(section, 12, tag="forged")  # a new chain from record 0, longer than the old one
    report = pull(source(section), tmp_path / "copy")
    assert not report.ok and "changed on the host" in report.findings[0]
    assert any(p.name.startswith("changed-") for p in (tmp_path / "copy").iterdir())  # the evidence is kept


def test_an_edited_record_and_a_missing_file_are_found(tmp_path):
    section = AuditSection(dir=tmp_path / "host", rotate_bytes=600)
    write(section, 20)
    assert pull(source(section), tmp_path / "copy").ok
    files = [path for _, path in chain_files(section.dir)]
    files[1].unlink()  # from the middle, no retention record
    text = files[0].read_bytes()
    files[0].write_bytes(text.replace(b'"n":"r0"', b'"n":"x0"'))
    findings = pull(source(section), tmp_path / "copy").findings
    assert any("gone from the host" in f and files[1].name in f for f in findings)
    assert any("changed on the host" in f and files[0].name in f for f in findings)


def test_files_removed_by_retention_stay_in_the_copy(tmp_path):
    section = AuditSection(dir=tmp_path / "host", rotate_bytes=600, retention_days=7)
    write(section, 20)
    assert pull(source(section), tmp_path / "copy").ok
    old = chain_files(section.dir)[0][1]
    os.utime(old, (0, 0))
    write(section, 10, tag="s")  # the next rotation removes the oldest file on the host
    assert not old.exists()
    report = pull(source(section), tmp_path / "copy")
    assert report.ok and (tmp_path / "copy" / old.name).exists(), report.findings


def test_signed_checkpoints_are_verified_with_the_gateway_key(tmp_path):
    key = Ed25519PrivateKey.generate()
    key_path = tmp_path / "signing.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    section = AuditSection(dir=tmp_path / "host", checkpoint_key=key_path, checkpoint_every=4)
    write(section, 9, Ed25519Signer(key_path))
    good = pull(source(section), tmp_path / "copy", key.public_key())
    assert good.ok and good.signed_through is not None
    wrong = pull(source(section), tmp_path / "copy2", Ed25519PrivateKey.generate().public_key())
    assert not wrong.ok and "signature does not verify" in wrong.findings[0]
