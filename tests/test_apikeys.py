"""The control side's API keyring."""

from __future__ import annotations

import json
import stat

import pytest

from deepfleet.apikeys import KeyringError, create_key, host_key_file, load_keyring, revoke_key
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
