"""The hash-chained audit log: written by real gateway traffic, verified by `deepfleet-runtime audit
verify`, and every kind of tampering found."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deepfleet_runtime.cli import main as runtime_cli
from deepfleet_runtime.gateway import audit as audit_module
from deepfleet_runtime.gateway.audit import AuditError, AuditLog, Ed25519Signer
from deepfleet_runtime.gateway.auditchain import GENESIS, chain_files, verify_chain
from deepfleet_runtime.gateway.config import AuditSection

from .conftest import audit_records


def verify(directory, capsys, *extra) -> tuple[int, str]:
    code = runtime_cli(["audit", "verify", str(directory), *extra])
    return code, capsys.readouterr().out


def write_records(section: AuditSection, count: int, signer=None) -> None:
    async def run():
        log = AuditLog(section, signer)
        try:
            await asyncio.gather(*(log.append({"type": "request", "n": i, "prompt": f"p{i} é"}) for i in range(count)))
        finally:
            log.close()

    asyncio.run(run())


def lines_of(directory):
    return [(path, path.read_bytes().splitlines(keepends=True)) for _, path in chain_files(directory)]


@pytest.fixture
def traffic_log(gateway, tmp_path, capsys):
    """A copy of the gateway's audit directory after 20 more requests through it."""
    with gateway.openai() as client:
        for i in range(20):
            answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"q{i}"}],
                                                    max_tokens=2, stream=bool(i % 2))
            list(answer) if i % 2 else answer  # a stream is acknowledged once read to its end
    audit_records(gateway)  # the last end record is written within audit.DEFER_S
    copy = tmp_path / "audit"
    shutil.copytree(gateway.audit_dir, copy)
    return copy


def test_chain_verifies_after_real_requests(traffic_log, capsys):
    code, out = verify(traffic_log, capsys)
    assert code == 0 and out.startswith("OK: ")
    records = [json.loads(line) for _, lines in lines_of(traffic_log) for line in lines]
    assert records[0]["prev"] == GENESIS and sum(r["type"] == "request" for r in records) >= 20
    assert [r["seq"] for r in records] == list(range(len(records)))


def test_an_edited_record_is_found(traffic_log, capsys):
    path, lines = lines_of(traffic_log)[-1]
    lines[3] = lines[3].replace(b'"status":200', b'"status":201')
    path.write_bytes(b"".join(lines))
    code, out = verify(traffic_log, capsys)
    assert code == 1 and "line 4" in out and "edited" in out


def test_an_edited_record_with_a_recomputed_hash_breaks_the_next_link(traffic_log, capsys):
    path, lines = lines_of(traffic_log)[-1]
    record = lines[3][:-1]
    head = record[:record.rfind(b',"hash":"')].replace(b'"status":200', b'"status":201')
    lines[3] = head + b',"hash":"' + hashlib.sha256(head).hexdigest().encode() + b'"}\n'
    path.write_bytes(b"".join(lines))
    code, out = verify(traffic_log, capsys)
    assert code == 1 and "line 5" in out and "does not follow" in out


def test_a_deleted_record_is_found(traffic_log, capsys):
    path, lines = lines_of(traffic_log)[-1]
    del lines[5]
    path.write_bytes(b"".join(lines))
    code, out = verify(traffic_log, capsys)
    assert code == 1 and "line 6: expected record 5, found 6 (records missing" in out


def test_reordered_records_are_found(traffic_log, capsys):
    path, lines = lines_of(traffic_log)[-1]
    lines[4], lines[5] = lines[5], lines[4]
    path.write_bytes(b"".join(lines))
    code, out = verify(traffic_log, capsys)
    assert code == 1 and "line 5: expected record 4, found 5" in out and "reordered" in out


def test_rotation_continues_the_chain_across_files(tmp_path, capsys):
    section = AuditSection(dir=tmp_path / "audit", rotate_bytes=600)
    write_records(section, 30)
    write_records(section, 10)  # a restart continues the same chain
    files = lines_of(section.dir)
    assert len(files) > 3
    for (_, previous), (_, following) in zip(files, files[1:]):
        assert json.loads(following[0])["prev"] == json.loads(previous[-1])["hash"]
    assert verify(section.dir, capsys)[0] == 0
    files[1][0].unlink()  # a whole file gone from the middle
    code, out = verify(section.dir, capsys)
    assert code == 1 and "missing" in out


def test_retention_removes_old_files_and_says_so_in_the_chain(tmp_path, capsys):
    section = AuditSection(dir=tmp_path / "audit", rotate_bytes=600, retention_days=7)
    write_records(section, 20)
    old = [path for _, path in chain_files(section.dir)][:2]
    for path in old:
        os.utime(path, (time.time() - 8 * 86400,) * 2)
    write_records(section, 10)  # the next rotation applies retention
    remaining = [path.name for _, path in chain_files(section.dir)]
    assert not set(p.name for p in old) & set(remaining)
    report = verify_chain(section.dir)
    assert report.first_seq > 0 and report.retention[0]["removed"] == [p.name for p in old]
    assert verify(section.dir, capsys)[0] == 0
    chain_files(section.dir)[0][1].unlink()  # removing one more file is not accounted for
    code, out = verify(section.dir, capsys)
    assert code == 1 and "no retention record accounts for them" in out


def test_signed_checkpoints_verify_only_with_the_right_key(tmp_path, capsys):
    key_path, public_path, other_path = tmp_path / "signing.key", tmp_path / "signing.pub", tmp_path / "other.pub"
    key = Ed25519PrivateKey.generate()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    for path, public in ((public_path, key.public_key()), (other_path, Ed25519PrivateKey.generate().public_key())):
        path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    section = AuditSection(dir=tmp_path / "audit", checkpoint_key=key_path, checkpoint_every=5)
    write_records(section, 12, Ed25519Signer(key_path))
    code, out = verify(section.dir, capsys, "--public-key", str(public_path))
    assert code == 0 and "3 signed checkpoint(s) verified; signed through record 13" in out
    code, out = verify(section.dir, capsys, "--public-key", str(other_path))
    assert code == 1 and "signature does not verify" in out


def test_rewriting_the_whole_chain_is_caught_by_a_checkpoint(tmp_path, capsys):
    """Someone recomputes every hash after editing a record: only a signature can tell."""
    key_path = tmp_path / "signing.key"
    key = Ed25519PrivateKey.generate()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    (tmp_path / "signing.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    section = AuditSection(dir=tmp_path / "audit", checkpoint_key=key_path, checkpoint_every=5)
    write_records(section, 5, Ed25519Signer(key_path))
    path = chain_files(section.dir)[0][1]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1]["prompt"] = "forged"
    prev, rewritten = GENESIS, []
    for record in records:
        body = {k: v for k, v in record.items() if k not in ("seq", "prev", "hash")}
        if record["type"] == "checkpoint":
            body["covers_hash"] = prev
        line, prev = audit_module.chain_line(record["seq"], prev, audit_module.encode_record(body))
        rewritten.append(line)
    path.write_bytes(b"".join(rewritten))
    assert verify(section.dir, capsys)[0] == 0  # the chain alone is consistent again...
    code, out = verify(section.dir, capsys, "--public-key", str(tmp_path / "signing.pub"))
    assert code == 1 and "signature does not verify" in out  # ...but not with the signed checkpoint


def test_a_torn_last_line_is_cut_and_noted(tmp_path, capsys):
    section = AuditSection(dir=tmp_path / "audit")
    write_records(section, 3)
    path = chain_files(section.dir)[-1][1]
    with open(path, "ab") as handle:
        handle.write(b'{"seq":3,"prev":"abc')  # power lost in the middle of a write
    assert verify(section.dir, capsys)[0] == 1
    write_records(section, 1)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[3]["type"] == "recovered" and records[3]["cut_bytes"] == 20
    assert verify(section.dir, capsys)[0] == 0


def test_append_returns_only_after_the_record_is_on_disk(tmp_path, monkeypatch):
    synced, release = threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd):
        synced.set()
        release.wait(10)
        real_fdatasync(fd)

    monkeypatch.setattr(audit_module.os, "fdatasync", slow_fdatasync)

    async def run():
        log = AuditLog(AuditSection(dir=tmp_path / "audit"))
        append = asyncio.ensure_future(log.append({"type": "request"}))
        while not synced.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not append.done()  # written, not yet synced: not acknowledged
        release.set()
        await append
        log.close()

    asyncio.run(run())


def test_a_failing_disk_fails_the_append(tmp_path, monkeypatch):
    def broken(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_module, "_write_all", broken)

    async def run():
        log = AuditLog(AuditSection(dir=tmp_path / "audit"))
        with pytest.raises(AuditError, match="No space left"):
            await log.append({"type": "request"})
        log.close()

    asyncio.run(run())


def _documented_verifier() -> str:
    """The plain-Python verifier printed in docs/gateway.md."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "gateway.md").read_text()
    start = doc.index("```python\nimport glob, hashlib, json")
    return doc[start + len("```python\n"):doc.index("```", start + 10)]


def test_the_verifier_in_the_docs_agrees(tmp_path):
    section = AuditSection(dir=tmp_path / "audit", rotate_bytes=600, retention_days=7)
    write_records(section, 20)
    os.utime(chain_files(section.dir)[0][1], (time.time() - 8 * 86400,) * 2)
    write_records(section, 5)  # with a retention record now
    run = lambda: subprocess.run([sys.executable, "-c", _documented_verifier(), str(section.dir)],  # noqa: E731
                                 capture_output=True, text=True, check=True).stdout
    assert run().startswith(f"OK, {verify_chain(section.dir).last_seq + 1} records")
    path, lines = lines_of(section.dir)[1]
    lines[0] = lines[0].replace(b"p", b"q", 1)
    path.write_bytes(b"".join(lines))
    assert "edited" in run()


def test_checkpoint_signatures_verify_with_openssl(tmp_path):
    """docs/gateway.md: any Ed25519 implementation can check a checkpoint (here OpenSSL 3)."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl")
    key = Ed25519PrivateKey.generate()
    (tmp_path / "signing.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    (tmp_path / "signing.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    section = AuditSection(dir=tmp_path / "audit", checkpoint_key=tmp_path / "signing.key", checkpoint_every=3)
    write_records(section, 3, Ed25519Signer(tmp_path / "signing.key"))
    checkpoint = [json.loads(line) for _, lines in lines_of(section.dir) for line in lines][3]
    (tmp_path / "msg").write_text(f"deepfleet-audit-checkpoint:v1:{checkpoint['covers_seq']}:{checkpoint['covers_hash']}")
    (tmp_path / "sig").write_bytes(base64.b64decode(checkpoint["signature"]))
    result = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "signing.pub"),
                             "-rawin", "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "Signature Verified Successfully" in result.stdout
