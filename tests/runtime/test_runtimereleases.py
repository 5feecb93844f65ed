"""Runtime releases: model release + runtime version + config, switched atomically, last N kept,
rolled back (model verified first), venvs kept while a release refers to them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deepfleet_runtime.cli import main
from deepfleet_runtime.modelstore.hostreleases import ModelReleases, activate
from deepfleet_runtime.modelstore.manifest import Manifest
from deepfleet_runtime.releasestore import ReleaseStore
from deepfleet_runtime.runtimereleases import (ReleaseError, activate_release, read_release, release_id,
                                               rollback_release, rollback_target, use_venv)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="releases are handed to root, like on hosts")
GROUP = "root"


class Host:
    """A host's /opt/deepfleet in a temporary directory."""

    def __init__(self, root: Path, store):
        self.home, self.store = root / "opt", store
        self.models = ModelReleases(self.home / "models", "tiny")
        self.releases = ReleaseStore(self.home / "releases")

    def model(self, tmp_path: Path, content: bytes) -> str:
        """A model release written, staged and activated on the host; its id."""
        source, out = tmp_path / f"src-{content.hex()}", tmp_path / f"out-{content.hex()}"
        source.mkdir()
        (source / "config.json").write_text("{}")
        (source / "weights.safetensors").write_bytes(content * 1000)
        self.store.write(source, out)
        release = Manifest.from_bytes((out / "manifest.json").read_bytes(), "m").release
        shutil.copytree(out, self.models.staging_dir(release))
        activate(self.models, release, self.store.keys, GROUP, keep=3)
        return release

    def venv(self, install_id: str) -> Path:
        venv = self.home / "venvs" / install_id
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "deepfleet-runtime").write_text("#!/bin/sh\n")
        (venv / "bin" / "deepfleet-runtime").chmod(0o755)
        return venv

    def config(self, model_release: str, batch: int = 32) -> Path:
        path = self.home.parent / "runtime.yaml"
        path.write_text(f"model:\n  name: tiny\n  path: {self.models.release_dir(model_release)}\n"
                        f"scheduler:\n  max_batch_size: {batch}\n")
        return path


@pytest.fixture
def host(tmp_path, store):
    return Host(tmp_path, store)


def _runtime(venv: Path) -> dict:
    return {"install_id": venv.name, "venv": str(venv)}


def test_a_release_pins_model_runtime_and_config_and_becomes_current(host, tmp_path):
    model, venv = host.model(tmp_path, b"a"), host.venv("deps1-run1")
    config = host.config(model)
    result = activate_release(host.releases, config, _runtime(venv), GROUP, keep=3)
    release = result["release"]
    assert release == release_id(config.read_bytes(), _runtime(venv)) and result["previous"] is None
    assert os.readlink(host.home / "releases" / "current") == release
    served = host.home / "releases" / "current"
    assert (served / "runtime.yaml").read_bytes() == config.read_bytes()
    assert os.readlink(served / "venv") == str(venv) and (served / "venv" / "bin" / "deepfleet-runtime").exists()
    record = read_release(host.releases, release)
    assert record["model"] == {"name": "tiny", "release": model} and record["runtime"] == _runtime(venv)
    # The same inputs are the same release: nothing new is written.
    assert activate_release(host.releases, config, _runtime(venv), GROUP, keep=3)["previous"] == release
    assert host.releases.history() == [release]


def test_a_config_that_does_not_pin_its_model_release_is_refused(host, tmp_path):
    host.model(tmp_path, b"a")
    config = host.home.parent / "runtime.yaml"
    config.write_text(f"model:\n  name: tiny\n  path: {host.models.current_link}\n")
    with pytest.raises(ReleaseError, match="names no model release"):
        activate_release(host.releases, config, _runtime(host.venv("v1")), GROUP, keep=3)
    config.write_text(f"model:\n  name: tiny\n  path: {host.models.release_dir('0123456789ab')}\n")
    with pytest.raises(ReleaseError, match="tiny@0123456789ab, which is not complete on this host"):
        activate_release(host.releases, config, _runtime(host.venv("v2")), GROUP, keep=3)
    assert host.releases.current() is None


def test_last_n_kept_with_their_venvs_and_rollback_restores_model_config_and_runtime(host, tmp_path, store):
    first_model, second_model = host.model(tmp_path, b"a"), host.model(tmp_path, b"b")
    old_venv = host.venv("deps1-run1")
    use_venv(host.home, old_venv, host.releases)  # as deploys do: install, link, then release
    r1 = activate_release(host.releases, host.config(first_model), _runtime(old_venv), GROUP, keep=2)["release"]
    new_venv = host.venv("deps1-run2")
    r2 = activate_release(host.releases, host.config(second_model), _runtime(new_venv), GROUP, keep=2)["release"]
    use_venv(host.home, new_venv, host.releases)
    r3 = activate_release(host.releases, host.config(second_model, batch=8), _runtime(new_venv), GROUP,
                          keep=2)["release"]
    assert host.releases.history() == [r2, r3] and not host.releases.release_dir(r1).exists()
    assert not old_venv.exists() and new_venv.exists()  # no kept release runs the old code any more

    # Back to r2 by its model's id: the model is verified and made current again too.
    host.model(tmp_path, b"c")  # the model moved on since
    rendered = host.home.parent / "etc" / "runtime.yaml"  # the deploy's copy: back to what is served
    result = rollback_release(host.releases, second_model, store.keys, GROUP, model_keep=3, config_path=rendered)
    assert result == {"release": r2, "previous": r3, "model": f"tiny@{second_model}"}
    assert host.models.current() == second_model
    assert "max_batch_size: 32" in (host.home / "releases" / "current" / "runtime.yaml").read_text()
    assert rendered.read_bytes() == (host.home / "releases" / "current" / "runtime.yaml").read_bytes()
    assert rendered.stat().st_mode & 0o777 == 0o640
    assert rollback_release(host.releases, None, store.keys, GROUP, model_keep=3)["release"] == r3
    with pytest.raises(ReleaseError, match=f"release {r1} of the runtime is not on this host; kept releases: {r3}, {r2}"):
        rollback_release(host.releases, r1, store.keys, GROUP, model_keep=3)


def test_the_rollback_target_names_the_release_and_its_image_and_changes_nothing(host, tmp_path, store, capsys):
    """What the rollback deploy asks first in Docker mode: the release a rollback would switch to,
    with its runtime (the image the container must run), without verifying or switching anything."""
    model = host.model(tmp_path, b"a")
    old = activate_release(host.releases, host.config(model), {"image": "deepfleet-runtime:old"}, GROUP, keep=3)
    new = activate_release(host.releases, host.config(model), {"image": "deepfleet-runtime:new"}, GROUP, keep=3)
    history = host.releases.history()
    target = rollback_target(host.releases, None)
    assert target == {"release": old["release"], "previous": new["release"], "model": f"tiny@{model}",
                      "runtime": {"image": "deepfleet-runtime:old"}}
    assert host.releases.current() == new["release"] and host.releases.history() == history
    assert rollback_target(host.releases, model)["release"] == old["release"]  # by its model release: not current
    with pytest.raises(ReleaseError, match="not on this host"):
        rollback_target(host.releases, "0123456789ab")
    # As the deploy asks it (roles/rollback.RollbackTarget): one JSON line.
    assert main(["release", "rollback", "--dry-run", "--root", str(host.home / "releases")]) == 0
    assert json.loads(capsys.readouterr().out) == target
    assert host.releases.current() == new["release"]


def test_a_rollback_whose_model_rotted_changes_nothing(host, tmp_path, store):
    first_model, second_model = host.model(tmp_path, b"a"), host.model(tmp_path, b"b")
    venv = host.venv("v1")
    activate_release(host.releases, host.config(first_model), _runtime(venv), GROUP, keep=3)
    r2 = activate_release(host.releases, host.config(second_model), _runtime(venv), GROUP, keep=3)["release"]
    weights = host.models.release_dir(first_model) / "encrypted" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match="weights.safetensors: chunk"):
        rollback_release(host.releases, None, store.keys, GROUP, model_keep=3)
    assert host.releases.current() == r2 and host.models.current() == second_model


def test_use_venv_replaces_a_venv_directory_of_older_deploys_and_switches_atomically(host):
    legacy = host.home / "venv"
    legacy.mkdir(parents=True)
    (legacy / "pyvenv.cfg").write_text("")
    venv = host.venv("deps1-run1")
    result = use_venv(host.home, venv, host.releases)
    assert result["previous"] is None and os.readlink(legacy) == str(venv)
    second = host.venv("deps1-run2")
    assert use_venv(host.home, second, host.releases)["removed_venvs"] == ["deps1-run1"]
    assert os.readlink(legacy) == str(second)
