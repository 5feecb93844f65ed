"""Backups of the control state: a real state dir (`pki init`, `keys create`, model keys) round-trips
through `deepfleet backup`, with its modes; a damaged, truncated, wrongly opened or re-signed
archive is refused with a message that says what happened; secrets never reach the output."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from deepfleet.backupformat import read_container
from deepfleet.cli import main
from deepfleet.modelkeys import load_model_keys

PASSPHRASE = "a long backup passphrase for tests"


@pytest.fixture
def fleet_state(tmp_path, monkeypatch, capsys):
    """A state dir made by the real commands, with a cache that must stay out of backups."""
    home = tmp_path / "home"
    monkeypatch.setenv("DEEPFLEET_HOME", str(home))
    monkeypatch.delenv("DEEPFLEET_CACHE", raising=False)
    monkeypatch.delenv("DEEPFLEET_KEY_PASSPHRASE", raising=False)
    monkeypatch.setenv("DEEPFLEET_BACKUP_PASSPHRASE", PASSPHRASE)
    assert main(["pki", "init"]) == 0
    assert main(["keys", "create", "alice", "--rpm", "60"]) == 0
    assert main(["keys", "create", "bob"]) == 0
    assert main(["keys", "revoke", "bob"]) == 0
    assert main(["model", "keys", "create"]) == 0
    assert load_model_keys(home / "model-keys").next_sequence("tiny") == 1  # sequences.json, as a release makes it
    (home / "rollouts").mkdir()
    (home / "rollouts" / "prod.json").write_text('{"state": "baking"}\n')
    (home / "cache" / "wheels").mkdir(parents=True)
    (home / "cache" / "wheels" / "big.whl").write_bytes(b"rebuildable")
    api_key = re.search(r"dfk-\S+", capsys.readouterr().out).group(0)
    return home, api_key


def _listing(home: Path) -> dict:
    """Every file under `home` but the cache: {relative path: (mode, bytes)}."""
    return {str(p.relative_to(home)): (stat.S_IMODE(p.stat().st_mode), p.read_bytes() if p.is_file() else None)
            for p in sorted(home.rglob("*")) if "cache" not in p.relative_to(home).parts}


def _outputs(capsys, *commands) -> list[str]:
    outputs = []
    for argv in commands:
        assert main(argv) == 0
        outputs.append(capsys.readouterr().out)
    return outputs


def test_a_backup_restored_on_a_new_control_machine_is_the_same_state(fleet_state, tmp_path, monkeypatch, capsys):
    home, api_key = fleet_state
    before = _outputs(capsys, ["keys", "list"], ["pki", "list"], ["model", "keys", "list"])
    files = _listing(home)
    out = tmp_path / "fleet.backup"
    assert main(["backup", "create", "--out", str(out)]) == 0
    created = capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert b"BEGIN" not in out.read_bytes() and b"alice" not in out.read_bytes()  # encrypted

    assert main(["backup", "verify", str(out)]) == 0
    listed = capsys.readouterr().out
    for name in ("pki/ca.key", "model-keys/model-signing.key", "model-keys/sequences.json", "api-keys.json",
                 "rollouts/prod.json"):
        assert name in listed
    assert "cache" not in listed and "big.whl" not in listed
    ca_key = (home / "pki" / "ca.key").read_text()
    for text in (created, listed):
        assert ca_key.splitlines()[1] not in text and api_key not in text and PASSPHRASE not in text

    fresh = tmp_path / "new-machine" / "home"
    monkeypatch.setenv("DEEPFLEET_HOME", str(fresh))
    assert main(["backup", "restore", str(out)]) == 0
    capsys.readouterr()
    assert _listing(fresh) == files  # contents and modes, 0600 secrets included
    assert stat.S_IMODE((fresh / "pki" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((fresh / "model-keys").stat().st_mode) == 0o700
    assert not (fresh / "cache").exists()
    after = _outputs(capsys, ["keys", "list"], ["pki", "list"], ["model", "keys", "list"])
    assert [text.replace(str(fresh), str(home)) for text in after] == before
    assert [p.name for p in fresh.parent.iterdir()] == ["home"]  # no staging left behind


def test_restore_refuses_existing_state_unless_forced_and_then_keeps_it_aside(fleet_state, tmp_path, capsys):
    home, _ = fleet_state
    out = tmp_path / "fleet.backup"
    assert main(["backup", "create", "--out", str(out)]) == 0
    files = _listing(home)
    assert main(["keys", "create", "carol"]) == 0
    assert main(["backup", "restore", str(out)]) == 1
    assert "already holds state" in capsys.readouterr().err
    assert "carol" in (home / "api-keys.json").read_text()  # untouched
    assert main(["backup", "restore", str(out), "--force"]) == 0
    assert _listing(home) == files
    aside = [p for p in home.parent.iterdir() if p.name.startswith("home.before-restore-")]
    assert len(aside) == 1 and "carol" in (aside[0] / "api-keys.json").read_text()
    assert (home / "cache" / "wheels" / "big.whl").exists()  # the cache moves back in


def _refused(capsys, out: Path, *extra: str) -> str:
    assert main(["backup", "verify", str(out), *extra]) == 1
    return capsys.readouterr().err


def test_a_flipped_byte_is_refused_naming_the_chunk(fleet_state, tmp_path, monkeypatch, capsys):
    home, _ = fleet_state
    out = tmp_path / "fleet.backup"
    assert main(["backup", "create", "--out", str(out)]) == 0
    container, _ = read_container(out)
    offset, length = container.chunks[0]
    data = bytearray(out.read_bytes())
    data[offset + length // 2] ^= 0x01
    out.write_bytes(bytes(data))
    err = _refused(capsys, out)
    assert f"chunk 0 (bytes {offset}-{offset + length - 1}) was altered" in err
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("DEEPFLEET_HOME", str(fresh))
    assert main(["backup", "restore", str(out)]) == 1
    assert "was altered" in capsys.readouterr().err and not fresh.exists()  # nothing written


def test_a_flipped_header_byte_and_a_truncated_file_are_refused(fleet_state, tmp_path, capsys):
    out = tmp_path / "fleet.backup"
    assert main(["backup", "create", "--out", str(out)]) == 0
    good = out.read_bytes()
    header_at = good.index(b'"created"')
    out.write_bytes(good[:header_at + 14] + bytes([good[header_at + 14] ^ 0x01]) + good[header_at + 15:])
    assert "header (bytes 0-" in _refused(capsys, out)
    out.write_bytes(good[:len(good) // 2])
    err = _refused(capsys, out)
    assert "is truncated" in err and f"ends at byte {len(good) // 2}" in err
    out.write_bytes(good + b"x")
    assert "bytes appended" in _refused(capsys, out)


def test_a_wrong_passphrase_is_named_as_such(fleet_state, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fleet.backup"
    assert main(["backup", "create", "--out", str(out)]) == 0
    monkeypatch.setenv("DEEPFLEET_BACKUP_PASSPHRASE", "not the passphrase")
    err = _refused(capsys, out)
    assert "wrong passphrase" in err and "not the passphrase" not in err
    monkeypatch.delenv("DEEPFLEET_BACKUP_PASSPHRASE")
    assert "set DEEPFLEET_BACKUP_PASSPHRASE" in _refused(capsys, out)


def test_a_signature_from_another_archive_is_refused(fleet_state, tmp_path, capsys):
    first, second = tmp_path / "one.backup", tmp_path / "two.backup"
    assert main(["backup", "create", "--out", str(first)]) == 0
    assert main(["backup", "create", "--out", str(second)]) == 0
    one, two = read_container(first)[0], read_container(second)[0]
    data = bytearray(first.read_bytes())
    data[one.signature_offset:one.signature_offset + 64] = two.signature
    first.write_bytes(bytes(data))
    assert f"signature (bytes {one.signature_offset}-" in _refused(capsys, first)


def test_a_backup_sealed_to_a_recipient_key_opens_only_with_its_identity(fleet_state, tmp_path, monkeypatch, capsys):
    home, _ = fleet_state
    monkeypatch.delenv("DEEPFLEET_BACKUP_PASSPHRASE")
    identity, other = tmp_path / "offsite.key", tmp_path / "other.key"
    assert main(["backup", "keygen", "--out", str(identity)]) == 0
    assert main(["backup", "keygen", "--out", str(other)]) == 0
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    out = tmp_path / "fleet.backup"
    assert main(["backup", "create", "--out", str(out), "--recipient", f"{identity}.pub"]) == 0
    capsys.readouterr()
    assert "--identity" in _refused(capsys, out)
    assert "wrong identity" in _refused(capsys, out, "--identity", str(other))
    verify_key = home / "model-keys" / "model-verify.pub"
    assert main(["backup", "verify", str(out), "--identity", str(identity), "--signer", str(verify_key)]) == 0
    assert "not an ed25519 public key" in _refused(capsys, out, "--identity", str(identity), "--signer",
                                                   f"{other}.pub")


def test_a_backup_signed_by_another_key_than_the_one_trusted_is_refused(fleet_state, tmp_path, capsys):
    out = tmp_path / "fleet.backup"
    assert main(["backup", "create", "--out", str(out)]) == 0
    assert main(["model", "keys", "create", "--keys-dir", str(tmp_path / "elsewhere")]) == 0
    capsys.readouterr()
    err = _refused(capsys, out, "--signer", str(tmp_path / "elsewhere" / "model-verify.pub"))
    assert "not by the key you trust" in err


def test_create_refuses_an_output_inside_the_state_dir_and_an_existing_file(fleet_state, tmp_path, capsys):
    home, _ = fleet_state
    assert main(["backup", "create", "--out", str(home / "b.backup")]) == 1
    assert "inside the state dir" in capsys.readouterr().err
    (tmp_path / "taken").write_text("x")
    assert main(["backup", "create", "--out", str(tmp_path / "taken")]) == 1
    assert "--force" in capsys.readouterr().err and (tmp_path / "taken").read_text() == "x"


def test_a_sealed_signing_key_needs_its_passphrase_to_sign_the_backup(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEEPFLEET_KEY_PASSPHRASE", "key passphrase")
    monkeypatch.setenv("DEEPFLEET_BACKUP_PASSPHRASE", PASSPHRASE)
    assert main(["model", "keys", "create"]) == 0
    monkeypatch.delenv("DEEPFLEET_KEY_PASSPHRASE")
    assert main(["backup", "create", "--out", str(tmp_path / "b")]) == 1
    assert "set DEEPFLEET_KEY_PASSPHRASE" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert os.listdir(tmp_path) == ["home"]


def test_in_a_many_chunk_archive_the_altered_chunk_and_a_dropped_tail_are_named(fleet_state, tmp_path, capsys):
    home, _ = fleet_state
    (home / "audit").mkdir()
    (home / "audit" / "gw1.log").write_bytes(os.urandom(300_000))  # pulled audit logs go in too
    out = tmp_path / "fleet.backup"
    assert main(["backup", "create", "--out", str(out)]) == 0
    assert main(["backup", "verify", str(out)]) == 0
    assert "audit/gw1.log" in capsys.readouterr().out
    good = out.read_bytes()
    container, _ = read_container(out)
    assert len(container.chunks) >= 5
    offset, length = container.chunks[3]
    out.write_bytes(good[:offset + 7] + bytes([good[offset + 7] ^ 0x80]) + good[offset + 8:])
    assert f"chunk 3 (bytes {offset}-{offset + length - 1}) was altered" in _refused(capsys, out)
    last_offset, _ = container.chunks[-1]
    cut = good[:last_offset - 4] + good[container.signature_offset - 4:]  # drop the last chunk, keep the end
    out.write_bytes(cut)
    assert f"chunk {len(container.chunks) - 2} " in _refused(capsys, out)
