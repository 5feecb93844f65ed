"""The control side's API keyring."""

from __future__ import annotations

import datetime
import json
import stat

import pytest

from deepfleet.apikeys import (KeyringError, create_key, hash_api_key, host_key_file, load_keyring, parse_expiry,
                              revoke_key, rotate_key)
from deepfleet_runtime.gateway.auth import KeyStore


def test_created_key_is_stored_only_as_a_hash(tmp_path):
    keyring = tmp_path / "keys.json"
    key = create_key(keyring, "clinic-a")
    assert key.startswith("dfk-") and len(key) > 40
    assert key not in keyring.read_text()
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    host_file = host_key_file(load_keyring(keyring))
    assert key not in host_file
    assert set(json.loads(host_file)["keys"][0]) == {"id", "sha256"}


def test_gateway_recognises_the_key_from_the_host_file(tmp_path):
    keyring = tmp_path / "keys.json"
    key = create_key(keyring, "a")
    other = create_key(keyring, "b")
    (tmp_path / "host.json").write_text(host_key_file(load_keyring(keyring)))
    store = KeyStore(tmp_path / "host.json")
    assert store.identify(key).key_id == "a"
    assert store.identify(other).key_id == "b"
    assert store.identify("dfk-guess") is None
    assert store.identify(None) is None


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "-leading"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(KeyringError, match="invalid"):
        create_key(tmp_path / "keys.json", name)


def test_duplicate_names_are_refused(tmp_path):
    create_key(tmp_path / "keys.json", "a")
    with pytest.raises(KeyringError, match="exists"):
        create_key(tmp_path / "keys.json", "a")


def test_a_corrupt_host_file_keeps_the_last_good_keys(tmp_path):
    keyring = tmp_path / "keys.json"
    key = create_key(keyring, "a")
    host_file = tmp_path / "host.json"
    host_file.write_text(host_key_file(load_keyring(keyring)))
    store = KeyStore(host_file)
    host_file.write_text("{broken")
    assert store.identify(key).key_id == "a"


def test_limits_travel_to_the_host_file_and_the_gateway(tmp_path):
    keyring = tmp_path / "keys.json"
    key = create_key(keyring, "clinic", rpm=30, tpm=0, concurrency=2, models=["deepseek-7b"], audit_content="sha256")
    create_key(keyring, "plain")
    (tmp_path / "host.json").write_text(host_key_file(load_keyring(keyring)))
    record = KeyStore(tmp_path / "host.json").identify(key)
    assert (record.rpm, record.tpm, record.concurrency, record.models, record.audit_content) == (
        30, 0, 2, ("deepseek-7b",), "sha256")
    plain = json.loads((tmp_path / "host.json").read_text())["keys"][1]
    assert set(plain) == {"id", "sha256"}  # no limits given: the gateway's defaults apply


def test_revoked_keys_leave_the_host_file_and_their_names_are_not_reused(tmp_path):
    keyring = tmp_path / "keys.json"
    key = create_key(keyring, "a")
    revoke_key(keyring, "a")
    assert json.loads(host_key_file(load_keyring(keyring))) == {"keys": []}
    assert load_keyring(keyring)[0]["revoked"]
    with pytest.raises(KeyringError, match="was revoked"):
        create_key(keyring, "a")
    with pytest.raises(KeyringError, match="already revoked"):
        revoke_key(keyring, "a")
    with pytest.raises(KeyringError, match="no key named 'b'"):
        revoke_key(keyring, "b")
    assert key not in keyring.read_text()


@pytest.mark.parametrize("limits, message", [({"rpm": -1}, "--rpm"), ({"tpm": "many"}, "--tpm"),
                                             ({"models": []}, "--models"), ({"audit_content": "some"}, "--audit-content")])
def test_bad_limits_are_refused(tmp_path, limits, message):
    with pytest.raises(KeyringError, match=message):
        create_key(tmp_path / "keys.json", "a", **limits)
    assert not (tmp_path / "keys.json").exists()


def test_keys_cli_creates_lists_and_revokes_without_printing_hashes(tmp_path, capsys):
    from deepfleet.cli import main

    keyring = str(tmp_path / "keys.json")
    assert main(["keys", "create", "clinic-a", "--keyring", keyring, "--rpm", "60", "--models", "m1", "m2"]) == 0
    key = capsys.readouterr().out.splitlines()[1]
    assert key.startswith("dfk-")
    assert main(["keys", "revoke", "clinic-a", "--keyring", keyring]) == 0
    assert main(["keys", "list", "--keyring", keyring]) == 0
    listing = capsys.readouterr().out
    assert "clinic-a" in listing and "m1,m2" in listing and "revoked" in listing and " 60 " in listing
    assert key not in listing and load_keyring(tmp_path / "keys.json")[0]["sha256"] not in listing


def test_expires_takes_a_duration_or_a_time_and_reaches_the_host_file(tmp_path):
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    assert parse_expiry("90d", now) == "2026-04-01T00:00:00Z"
    assert parse_expiry("2027-01-01T00:00:00+01:00", now) == "2026-12-31T23:00:00Z"
    for bad, message in (("90x", "duration"), ("0d", "duration"), ("2025-01-01T00:00:00Z", "in the past"),
                         ("2030-01-01T00:00:00", "time zone")):
        with pytest.raises(KeyringError, match=message):
            parse_expiry(bad, now)
    keyring = tmp_path / "keys.json"
    create_key(keyring, "a", expires="30d", tokens_per_day=1000, tokens_per_month=20000, requests_per_day=50)
    entry = json.loads(host_key_file(load_keyring(keyring)))["keys"][0]
    expires = datetime.datetime.fromisoformat(entry["expires"].replace("Z", "+00:00"))
    assert abs((expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds() - 30 * 86400) < 60
    assert (entry["tokens_per_day"], entry["tokens_per_month"], entry["requests_per_day"]) == (1000, 20000, 50)


def test_rotate_gives_a_new_secret_and_keeps_the_old_one_for_the_grace_only(tmp_path):
    keyring = tmp_path / "keys.json"
    old = create_key(keyring, "a", rpm=5, expires="90d")
    new, record = rotate_key(keyring, "a", grace="1h")
    assert new != old and new.startswith("dfk-") and new not in keyring.read_text()
    entries = json.loads(host_key_file(load_keyring(keyring)))["keys"]
    assert [e["sha256"] for e in entries] == sorted([hash_api_key(old), hash_api_key(new)],
                                                    key=lambda h: h != hash_api_key(old))
    old_entry, new_entry = entries
    grace_end = datetime.datetime.fromisoformat(old_entry["expires"].replace("Z", "+00:00"))
    assert abs((grace_end - datetime.datetime.now(datetime.timezone.utc)).total_seconds() - 3600) < 60
    assert old_entry["rpm"] == new_entry["rpm"] == 5 and new_entry["id"] == old_entry["id"] == "a"
    assert new_entry["expires"] > old_entry["expires"]  # the new secret gets the old one's lifetime again
    revoke_key(keyring, "a")
    assert json.loads(host_key_file(load_keyring(keyring))) == {"keys": []}  # every secret of it
    with pytest.raises(KeyringError, match="revoked"):
        rotate_key(keyring, "a")
    with pytest.raises(KeyringError, match="--grace"):
        create_key(keyring, "b") and rotate_key(keyring, "b", grace="soon")
