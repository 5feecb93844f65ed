"""The control side's API keyring."""

from __future__ import annotations

import json
import stat

import pytest

from deepfleet.apikeys import KeyringError, create_key, host_key_file, load_keyring
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
    assert store.identify(key) == "a"
    assert store.identify(other) == "b"
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
    assert store.identify(key) == "a"
