"""Model keys on a host: sealed with systemd-creds (a real one, with a credential secret of the
test's own), decrypted only for root and the runtime's private copy, and only those in use kept."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from deepfleet_runtime.modelstore import KeyDirectory, ModelStoreError
from deepfleet_runtime.modelstore.hostreleases import ModelReleases, activate
from deepfleet_runtime.modelstore.keys import encode_kek, kek_file_name, kek_id
from deepfleet_runtime.modelstore.release import Release
from deepfleet_runtime.modelstore.sealedkeys import seal, sealed_file_name, unseal_into

from .test_hostreleases import _stage

pytestmark = [pytest.mark.skipif(not shutil.which("systemd-creds"), reason="needs systemd-creds (systemd >= 250)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="keys are root's, like on hosts")]


@pytest.fixture
def host_secret(tmp_path, monkeypatch):
    """This test's own credential secret, instead of the machine's /var/lib/systemd/credential.secret."""
    monkeypatch.setenv("SYSTEMD_CREDENTIAL_SECRET", str(tmp_path / "credential.secret"))
    return tmp_path / "credential.secret"


def _sealed_keys_dir(store, directory):
    """A host keys directory like the model role leaves it: the verify key, the KEK sealed."""
    directory.mkdir()
    shutil.copy(store.keys.path / "model-verify.pub", directory)
    plain = directory.parent / "plain.key"
    plain.write_text(encode_kek(store.kek))
    seal(plain, directory / sealed_file_name(kek_id(store.kek)), kek_id(store.kek))
    plain.unlink()
    return KeyDirectory(directory)


def test_a_sealed_kek_opens_a_release_on_its_host_and_not_without_its_secret(store, host_secret, tmp_path,
                                                                             monkeypatch):
    keys = _sealed_keys_dir(store, tmp_path / "keys")
    sealed = keys.path / sealed_file_name(kek_id(store.kek))
    assert encode_kek(store.kek).strip().encode() not in sealed.read_bytes()  # the disk holds no plain KEK
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o400 and not (keys.path / kek_file_name(kek_id(store.kek))).exists()
    assert Release.open(store.release, keys).manifest.name == "tiny"
    monkeypatch.setenv("SYSTEMD_CREDENTIAL_SECRET", str(tmp_path / "another-hosts.secret"))  # the disk, elsewhere
    with pytest.raises(ModelStoreError, match="systemd-creds decrypt"):
        Release.open(store.release, KeyDirectory(keys.path))


def test_the_runtime_gets_a_plain_private_copy_owned_by_its_user(store, host_secret, tmp_path):
    keys = _sealed_keys_dir(store, tmp_path / "keys")
    copy = tmp_path / "run" / "keys"
    copy.parent.mkdir()
    written = unseal_into(keys.path, copy, 4321, 4321)
    assert written == sorted([kek_file_name(kek_id(store.kek)), "model-verify.pub"])
    for name in written:
        info = (copy / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (4321, 0o400)
    assert Release.open(store.release, KeyDirectory(copy)).manifest.name == "tiny"


def test_a_kek_no_kept_release_uses_leaves_the_host_at_activation(store, host_secret, tmp_path):
    keys = _sealed_keys_dir(store, tmp_path / "keys")
    retired_kek = os.urandom(32)  # e.g. rotated away: every kept release is wrapped with the current one
    plain = tmp_path / "old.key"
    plain.write_text(encode_kek(retired_kek))
    seal(plain, keys.path / sealed_file_name(kek_id(retired_kek)), kek_id(retired_kek))
    host = ModelReleases(tmp_path / "models", "tiny")
    result = activate(host, _stage(store, host, tmp_path, b"a"), keys, "root", keep=3)
    assert result["retired_keys"] == [kek_id(retired_kek)]
    assert sorted(p.name for p in keys.path.iterdir()) == sorted(["model-verify.pub",
                                                                  sealed_file_name(kek_id(store.kek))])
