"""The fleet's model keys: a site that only deploys holds no signing key; private keys can be
passphrase-protected; a missing keys directory is refused with a command that creates it, as written."""

from __future__ import annotations

import re
import shlex

import pytest

from deepfleet.cli import main

from deepfleet.modelkeys import (KEYRING_FILE, SIGNING_KEY_FILE, ModelKeysError, create_model_keys,
                                 export_verify_only, load_model_keys)
from deepfleet.modelpack import ensure_release, encrypt_model
from deepfleet_runtime.modelstore.keys import VERIFY_KEY_FILE
from deepfleet_runtime.modelstore.release import Release


def test_a_verify_only_directory_deploys_releases_but_cannot_sign(tiny_model_dir, tmp_path):
    keys, _ = create_model_keys(tmp_path / "keys")
    encrypt_model(tiny_model_dir, tmp_path / "release", "tiny", keys, log=lambda _: None)
    site = export_verify_only(keys, tmp_path / "site-keys")
    assert not (site.path / SIGNING_KEY_FILE).exists()
    assert sorted(p.name for p in site.path.iterdir()) == sorted(
        [VERIFY_KEY_FILE, KEYRING_FILE, *(p.name for p in keys.kek_files().values())])
    loaded = load_model_keys(site.path)
    assert ensure_release(tmp_path / "release", "tiny", loaded, tmp_path / "cache") == tmp_path / "release"
    assert Release.open(tmp_path / "release", loaded.keys).manifest.name == "tiny"
    with pytest.raises(ModelKeysError, match="verify-only.*cannot sign"):
        encrypt_model(tiny_model_dir, tmp_path / "other", "tiny", loaded, log=lambda _: None)


def test_the_signing_key_is_sealed_with_a_passphrase_when_one_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFLEET_KEY_PASSPHRASE", "correct horse battery staple")
    keys, _ = create_model_keys(tmp_path / "keys")
    pem = (keys.path / SIGNING_KEY_FILE).read_text()
    assert "ENCRYPTED PRIVATE KEY" in pem
    assert keys.signing_key().sign(b"x")  # opens with it
    monkeypatch.setenv("DEEPFLEET_KEY_PASSPHRASE", "wrong")
    with pytest.raises(ModelKeysError, match="DEEPFLEET_KEY_PASSPHRASE.*does not open"):
        keys.signing_key()
    monkeypatch.delenv("DEEPFLEET_KEY_PASSPHRASE")
    with pytest.raises(ModelKeysError, match="passphrase-protected.*set DEEPFLEET_KEY_PASSPHRASE"):
        keys.signing_key()


def test_missing_keys_name_the_command_that_creates_them_and_that_command_works(tmp_path):
    with pytest.raises(ModelKeysError) as error:
        load_model_keys(tmp_path / "keys")
    command = re.search(r"`deepfleet (model keys create [^`]+)`", str(error.value)).group(1)
    assert main(shlex.split(command)) == 0
    assert load_model_keys(tmp_path / "keys").path == tmp_path / "keys"
