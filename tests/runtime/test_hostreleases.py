"""A host's releases: verified before they become current, switched atomically, last N kept, rolled back."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import pytest

from deepfleet_runtime.modelstore import ModelStoreError, hostreleases
from deepfleet_runtime.modelstore.hostreleases import ModelReleases, activate, record_served, rollback_target
from deepfleet_runtime.modelstore.manifest import Manifest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="activation hands releases to root, like on hosts")
GROUP = "root"


@pytest.fixture
def host(tmp_path):
    return ModelReleases(tmp_path / "models", "tiny")


def _stage(store, host, tmp_path, content: bytes, sequence: int = 0) -> str:
    """Write a small release with `content` (numbered `sequence`) and copy it into the host's
    staging place; its id."""
    source = tmp_path / f"src-{content.hex()}"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "weights.safetensors").write_bytes(content * 50_000)
    out = tmp_path / f"out-{content.hex()}"
    store.write(source, out, sequence)
    release = Manifest.from_bytes((out / "manifest.json").read_bytes(), "m").release
    host.models_dir.mkdir(exist_ok=True)
    shutil.copytree(out, host.staging_dir(release))
    return release


def test_a_pushed_release_is_verified_then_becomes_current_owned_by_root(store, host, tmp_path):
    release = _stage(store, host, tmp_path, b"a")
    result = activate(host, release, store.keys, GROUP, keep=3)
    assert result == {"release": release, "previous": None, "removed": [], "retired_keys": []}
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


@pytest.fixture
def victim(tmp_path):
    """A file outside every release, like /etc/shadow: owned by someone else, mode 0600."""
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir()
    path.write_text("root:$6$secret\n")
    os.chown(path, 4321, 4321)
    os.chmod(path, 0o600)
    return path


def _untouched(path) -> bool:
    info = os.lstat(path)
    return (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 4321, 0o600)


def _activation_refusal(host, release, store) -> str:
    """The message activation refused with ("" when it went through)."""
    try:
        activate(host, release, store.keys, GROUP, keep=3)
    except ModelStoreError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize("where", ["encrypted/extra", "encrypted/config.json", "manifest-dir"])
def test_a_staged_symbolic_link_changes_no_file_outside_the_release(store, host, tmp_path, victim, where):
    release = _stage(store, host, tmp_path, b"a")
    staging = host.staging_dir(release)
    if where == "manifest-dir":  # a whole directory swapped for a link to the victim's directory
        shutil.rmtree(staging / "encrypted")
        (staging / "encrypted").symlink_to(victim.parent)
    else:
        (staging / where).unlink(missing_ok=True)
        (staging / where).symlink_to(victim)
    refusal = _activation_refusal(host, release, store)
    assert _untouched(victim), "activation changed the owner or mode of a file outside the release"
    assert re.search("symbolic link.*removed", refusal)
    assert host.current() is None and not any(p.is_symlink() for p in staging.rglob("*"))


def test_a_staged_hard_link_to_a_file_outside_is_refused(store, host, tmp_path, victim):
    release = _stage(store, host, tmp_path, b"a")
    os.link(victim, host.staging_dir(release) / "encrypted" / "extra")
    refusal = _activation_refusal(host, release, store)
    assert _untouched(victim), "activation changed the owner or mode of a file outside the release"
    assert re.search(r"encrypted/extra \(a hard link\).*removed", refusal)
    assert victim.read_text() == "root:$6$secret\n"


def test_files_not_in_the_manifest_are_refused_and_removed(store, host, tmp_path):
    release = _stage(store, host, tmp_path, b"a")
    (host.staging_dir(release) / "encrypted" / "planted.py").write_text("import os")
    with pytest.raises(ModelStoreError, match=r"encrypted/planted.py \(not in the manifest\).*removed"):
        activate(host, release, store.keys, GROUP, keep=3)
    assert not (host.staging_dir(release) / "encrypted" / "planted.py").exists()
    assert activate(host, release, store.keys, GROUP, keep=3)["release"] == release  # the rest stays


def test_the_uploader_loses_the_staging_directory_before_it_is_verified(store, host, tmp_path, monkeypatch):
    release = _stage(store, host, tmp_path, b"a")
    staging = host.staging_dir(release)
    for path in [staging, *staging.rglob("*")]:
        os.chown(path, 4321, 4321)  # the SSH login user's, as pushed
    seen = {}
    original = hostreleases.Release.open

    def spying_open(directory, *args, **kwargs):
        seen.update({str(p.relative_to(staging)): (p.lstat().st_uid, stat.S_IMODE(p.lstat().st_mode))
                     for p in [staging, *staging.rglob("*")]})
        return original(directory, *args, **kwargs)

    monkeypatch.setattr(hostreleases.Release, "open", spying_open)
    activate(host, release, store.keys, GROUP, keep=3)
    assert seen and all(uid == 0 and not mode & 0o077 for uid, mode in seen.values())


def test_an_older_signed_release_is_refused_unless_it_is_a_rollback(store, host, tmp_path):
    new = _stage(store, host, tmp_path, b"\2", sequence=2)
    activate(host, new, store.keys, GROUP, keep=3)
    assert record_served(host, new) == 2  # the runtime answered /ready on it
    old = _stage(store, host, tmp_path, b"\1", sequence=1)  # signed long ago, still a valid signature
    with pytest.raises(ModelStoreError, match=r"number 1.*served number 2.*deepfleet rollback"):
        activate(host, old, store.keys, GROUP, keep=3)
    assert host.current() == new
    activate(host, old, store.keys, GROUP, keep=3, allow_older=True)  # what `deepfleet rollback` does
    assert host.current() == old
    replayed = _stage(store, host, tmp_path, b"\3", sequence=1)
    with pytest.raises(ModelStoreError, match="number 1.*served number 2"):  # the floor stays after a rollback
        activate(host, replayed, store.keys, GROUP, keep=3)


def test_a_release_that_never_served_raises_no_floor(store, host, tmp_path):
    """A rollout whose new release failed to become ready rolls back; the fixed release, numbered
    below the failed one, must still be taken (the failed one never served)."""
    v1 = _stage(store, host, tmp_path, b"\1", sequence=1)
    activate(host, v1, store.keys, GROUP, keep=3)
    record_served(host, v1)
    broken = _stage(store, host, tmp_path, b"\3", sequence=3)
    activate(host, broken, store.keys, GROUP, keep=3)  # its runtime never answered /ready
    activate(host, v1, store.keys, GROUP, keep=3, allow_older=True)  # the rollout put v1 back
    v2 = _stage(store, host, tmp_path, b"\2", sequence=2)  # signed before the broken one
    activate(host, v2, store.keys, GROUP, keep=3)
    assert host.current() == v2 and host.highest_sequence() == 1
    assert record_served(host, v2) == 2 and host.highest_sequence() == 2


def test_wait_ready_records_the_release_as_served_once_the_runtime_answers(store, host, tmp_path, capsys):
    from argparse import Namespace

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from deepfleet_runtime.commands import wait_ready
    from deepfleet_runtime.serving import build_server
    from tests.conftest import free_port
    from tests.runtime.test_serving import _serve_in_thread

    release = _stage(store, host, tmp_path, b"\5", sequence=5)
    activate(host, release, store.keys, GROUP, keep=3)
    assert host.highest_sequence() == 0  # activated, not served yet

    async def ready(_):
        return JSONResponse({"status": "ready"})

    port = free_port()
    server = build_server(Starlette(routes=[Route("/ready", ready)]), "127.0.0.1", port)
    thread = _serve_in_thread(server)
    try:
        args = Namespace(url=f"http://127.0.0.1:{port}/ready", timeout=10.0, cafile=None, cert=None, key=None,
                         served_model=host.release_dir(release))
        assert wait_ready.run(args) == 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert host.highest_sequence() == 5
    assert f"served: tiny@{release} (release number 5)" in capsys.readouterr().out
