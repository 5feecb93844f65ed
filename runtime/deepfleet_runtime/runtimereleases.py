"""A host's runtime releases: what the runtime serves is one release = a model release + a runtime
version + the rendered runtime.yaml, kept under /opt/deepfleet/releases/ (a releasestore.ReleaseStore):

    releases/<id>/runtime.yaml    the config, naming its model release's directory explicitly
    releases/<id>/release.json    {"id", "created", "model": {"name", "release"}, "runtime": {...},
                                   "config_sha256"}
    releases/<id>/venv            -> /opt/deepfleet/venvs/<install id> (systemd mode: the runtime's code)
    releases/current              -> <id>: the runtime unit runs current/venv with current/runtime.yaml

The id is a digest of the config and the runtime version, so the same inputs are the same release.
Runtime venvs live in /opt/deepfleet/venvs/<install id>/ (one per wheel set) and `/opt/deepfleet/venv`
points at the newest (the gateway and the tools run from it); a venv no kept release and not that
link refer to is removed. Runs as root, through `deepfleet-runtime release ...`.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .atomicfile import fsync_dir, write_atomic
from .config import load_runtime_config
from .modelstore.hostreleases import ModelReleases, activate, sync_tree
from .modelstore.keys import KeyDirectory
from .releasestore import ReleaseStore

RELEASE_FILE = "release.json"
CONFIG_FILE = "runtime.yaml"
VENV_LINK = "venv"


class ReleaseError(RuntimeError):
    """A runtime release cannot be made or switched to; the message names the cause and the fix."""


def release_id(config: bytes, runtime: dict) -> str:
    """The id of the release made of this runtime.yaml and this runtime version."""
    material = json.dumps({"config_sha256": hashlib.sha256(config).hexdigest(), "runtime": runtime}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def model_of(config_path: Path) -> tuple[Path, str, str]:
    """(models directory, model name, model release) that a runtime.yaml serves."""
    path = Path(load_runtime_config(config_path).model.path)
    name, at, release = path.name.rpartition("@")
    if not at or release == "current":
        raise ReleaseError(f"{config_path}: model.path {path} names no model release (<name>@<release>); "
                           "a runtime release must pin the model it serves")
    return path.parent, name, release


def read_release(store: ReleaseStore, release: str) -> dict:
    return json.loads((store.release_dir(release) / RELEASE_FILE).read_text())


def activate_release(store: ReleaseStore, config_path: Path, runtime: dict, group: str, keep: int) -> dict:
    """Make the release of `config_path` + `runtime` current: written once (config copied, record,
    venv link), fsynced, renamed into place; then `current` switched atomically and releases beyond
    the last `keep` removed. The config's model release must be on the host, complete.

    `runtime`: {"install_id": ..., "venv": "/opt/deepfleet/venvs/<install id>"} or {"image": tag}.
    """
    config = config_path.read_bytes()
    models_dir, model_name, model_release = model_of(config_path)
    if not ModelReleases(models_dir, model_name).is_complete(model_release):
        raise ReleaseError(f"{config_path} serves {model_name}@{model_release}, which is not complete on this "
                           f"host ({models_dir}); activate the model release first (the deploy does)")
    venv = runtime.get("venv")
    if venv and not os.access(Path(venv) / "bin" / "deepfleet-runtime", os.X_OK):
        raise ReleaseError(f"runtime venv {venv} holds no deepfleet-runtime; install it first (the deploy does)")
    new_id = release_id(config, runtime)
    with store.locked():
        previous = store.current()
        if not store.is_complete(new_id):
            _write_release(store, new_id, config, runtime, {"name": model_name, "release": model_release}, group)
        store.switch(new_id)
        removed = store.prune(keep)
    removed_venvs = prune_venvs(store, Path(venv).parent) if venv else []
    return {"release": new_id, "previous": previous, "removed": removed, "removed_venvs": removed_venvs,
            "model": f"{model_name}@{model_release}"}


def rollback_release(store: ReleaseStore, to: str | None, keys: KeyDirectory, group: str, model_keep: int,
                     config_path: Path | None = None) -> dict:
    """Switch back to the release active before the current one, or `to`: a kept release id, or a
    model release id (then the most recent kept release serving it, the current one last). Its model release is verified
    in full first (it has been at rest) and made the model's current one; a failure changes nothing.
    `config_path` (the deploy's rendered runtime.yaml) gets the release's config back, so that it always
    says what the host serves and a plan diffs against that."""
    target = _rollback_target(store, to)
    record = read_release(store, target)
    models_dir = model_of(store.release_dir(target) / CONFIG_FILE)[0]
    activate(ModelReleases(models_dir, record["model"]["name"]), record["model"]["release"], keys, group, model_keep,
             allow_older=True)  # a rollback: the one way back below the highest release number served
    with store.locked():
        previous = store.current()
        store.switch(target)
        if config_path is not None:
            write_atomic(config_path, (store.release_dir(target) / CONFIG_FILE).read_bytes(), mode=0o640)
            os.chown(config_path, 0, grp.getgrnam(group).gr_gid)
    return {"release": target, "previous": previous, "model": f"{record['model']['name']}@{record['model']['release']}"}


def rollback_target(store: ReleaseStore, to: str | None) -> dict:
    """The release rollback_release(store, to) would switch to, with its model and runtime (in Docker
    mode the image the container must run); nothing is verified or changed."""
    target = _rollback_target(store, to)
    record = read_release(store, target)
    return {"release": target, "previous": store.current(),
            "model": f"{record['model']['name']}@{record['model']['release']}", "runtime": record["runtime"]}


def _rollback_target(store: ReleaseStore, to: str | None) -> str:
    if to is not None and not store.is_complete(to):  # a model release id: the latest release serving it
        serving = [r for r in store.history() if read_release(store, r)["model"]["release"] == to]
        earlier = [r for r in serving if r != store.current()]
        if serving:
            return (earlier or serving)[-1]
    try:
        return store.previous(to)
    except LookupError as exc:
        raise ReleaseError(str(exc)) from None


def _write_release(store: ReleaseStore, release: str, config: bytes, runtime: dict, model: dict, group: str) -> None:
    staging = store.staging_dir(release)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / CONFIG_FILE).write_bytes(config)
    record = {"id": release, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": model,
              "runtime": runtime, "config_sha256": hashlib.sha256(config).hexdigest()}
    (staging / RELEASE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    if runtime.get("venv"):
        os.symlink(runtime["venv"], staging / VENV_LINK)
    sync_tree(staging)
    _own_by_root(staging, group)
    store.mark_complete(staging, {"id": release})
    store.promote(release)


def _own_by_root(directory: Path, group: str) -> None:
    """root owns a runtime release (written by root here); the service group may read it. Links
    (the venv link) are not followed."""
    gid = grp.getgrnam(group).gr_gid
    for root, dirs, files in os.walk(directory):
        os.chown(root, 0, gid, follow_symlinks=False)
        os.chmod(root, 0o750)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chown(path, 0, gid)
                os.chmod(path, 0o640)


def use_venv(home: Path, venv: Path, store: ReleaseStore) -> dict:
    """Point <home>/venv at `venv` (atomically) and remove venvs nothing refers to any more."""
    link = home / "venv"
    previous = os.readlink(link) if link.is_symlink() else None
    if previous != str(venv):
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)  # a host deployed before per-release venvs: its venv was a directory
        temporary = link.with_name(".venv.new")
        temporary.unlink(missing_ok=True)
        os.symlink(venv, temporary)
        os.replace(temporary, link)
        fsync_dir(home)
    return {"venv": str(venv), "previous": previous, "removed_venvs": prune_venvs(store, venv.parent)}


def prune_venvs(store: ReleaseStore, venvs_dir: Path) -> list[str]:
    """Remove the venvs in `venvs_dir` that no kept release and not the <home>/venv link refer to."""
    if not venvs_dir.is_dir():
        return []
    wanted = {os.path.realpath(venvs_dir.parent / "venv")}
    for release in store.history():
        venv = read_release(store, release)["runtime"].get("venv")
        if venv:
            wanted.add(os.path.realpath(venv))
    removed = []
    for path in sorted(venvs_dir.iterdir()):
        if path.is_dir() and not path.is_symlink() and os.path.realpath(path) not in wanted:
            shutil.rmtree(path)
            removed.append(path.name)
    return removed

