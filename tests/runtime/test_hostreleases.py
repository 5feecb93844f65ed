"""A host's releases: verified before they become current, switched atomically, last N kept, rolled back."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from deepfleet_runtime.modelstore import ModelStoreError
from deepfleet_runtime.modelstore.hostreleases import ModelReleases, activate, rollback_target
from deepfleet_runtime.modelstore.manifest import Manifest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="activation hands releases to root, like on hosts")
GROUP = "root"


@pytest.fixture
def host(tmp_path):
    return ModelReleases(tmp_path / "models", "tiny")


def _stage(store, host, tmp_path, content: bytes) -> str:
    """Write a small release with `content` and copy it into the host's staging place; its id."""
    source = tmp_path / f"src-{content.hex()}"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "weights.safetensors").write_bytes(content * 50_000)
    out = tmp_path / f"out-{content.hex()}"
    store.write(source, out)
    release = Manifest.from_bytes((out / "manifest.json").read_bytes(), "m").release
    host.models_dir.mkdir(exist_ok=True)
    shutil.copytree(out, host.staging_dir(release))
    return release


def test_a_pushed_release_is_verified_then_becomes_current_owned_by_root(store, host, tmp_path):
    release = _stage(store, host, tmp_path, b"a")
    result = activate(host, release, store.keys, GROUP, keep=3)
    assert result == {"release": release, "previous": None, "removed": []}
    assert host.current() == release and os.readlink(host.current_link) == f"tiny@{release}"
    assert not host.staging_dir(release).exists()
    weights = host.release_dir(release) / "encrypted" / "weights.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) == 0o640 and weights.stat().st_uid == 0
    assert stat.S_IMODE(host.release_dir(release).stat().st_mode) == 0o750
    assert json.loads(host.history_file.read_text()) == {"releases": [release]}


def test_a_tampered_push_changes_nothing_and_is_sent_again(store, host, tmp_path):
    first = activate(host, _stage(store, host, tmp_path, b"a"), store.keys, GROUP, keep=3)["release"]
    second = _stage(store, host, tmp_path, b"b")
    bad = host.staging_dir(second) / "encrypted" / "weights.safetensors"
    data = bytearray(bad.read_bytes())
    data[-5] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match=r"weights.safetensors: chunk \d+ failed authentication.*removed it") as error:
        activate(host, second, store.keys, GROUP, keep=3)
    assert error.value.path == "weights.safetensors"
    assert host.current() == first and not host.is_complete(second)
    assert not bad.exists() and (host.staging_dir(second) / "encrypted" / "config.json").exists()


def test_the_last_n_releases_are_kept_and_rollback_goes_to_the_previous(store, host, tmp_path):
    releases = []
    for n in range(3):
        releases.append(_stage(store, host, tmp_path, bytes([n])))
        result = activate(host, releases[-1], store.keys, GROUP, keep=2)
    assert result["removed"] == [releases[0]]
    assert host.history() == releases[1:] and not host.release_dir(releases[0]).exists()
    assert rollback_target(host, None) == releases[1]
    activate(host, releases[1], store.keys, GROUP, keep=2)
    assert host.current() == releases[1] and host.history() == [releases[2], releases[1]]
    assert rollback_target(host, None) == releases[2]  # rolling back again undoes the rollback
    with pytest.raises(ModelStoreError, match=f"release {releases[0]} of tiny is not on this host; kept releases: "):
        rollback_target(host, releases[0])


def test_a_kept_release_that_rotted_at_rest_is_not_rolled_back_to(store, host, tmp_path):
    old = _stage(store, host, tmp_path, b"\1")
    activate(host, old, store.keys, GROUP, keep=3)
    new = _stage(store, host, tmp_path, b"\2")
    activate(host, new, store.keys, GROUP, keep=3)
    (host.release_dir(old) / "encrypted" / "weights.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(ModelStoreError, match="weights.safetensors: .* bytes, the manifest says"):
        activate(host, rollback_target(host, None), store.keys, GROUP, keep=3)
    assert host.current() == new


def test_activation_clears_pushes_the_inventory_no_longer_names(store, host, tmp_path):
    abandoned = _stage(store, host, tmp_path, b"x")  # pushed, then the inventory moved on
    release = _stage(store, host, tmp_path, b"y")
    activate(host, release, store.keys, GROUP, keep=3)
    assert not host.staging_dir(abandoned).exists() and host.current() == release


def test_a_first_rollback_has_nowhere_to_go(store, host, tmp_path):
    activate(host, _stage(store, host, tmp_path, b"a"), store.keys, GROUP, keep=3)
    with pytest.raises(ModelStoreError, match="no earlier release on this host"):
        rollback_target(host, None)
