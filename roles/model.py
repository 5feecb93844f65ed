"""The model role: the fleet's model keys and an encrypted, signed release on every host.

Control side: `model_source` is a plain model directory (encrypted once into the cache, then
reused) or a release from `deepfleet model encrypt` (deepfleet/modelpack.py). Hosts get:
    /etc/deepfleet/keys/      root 0700: the manifest verify key, and only the KEK of the release
                              pushed (older ones stay while a kept release needs them), root 0400,
                              sealed with systemd-creds in systemd mode (model_keys_sealed)
    <models>/.<name>@<release>.partial/   the push, resumable: only missing bytes are sent
    <models>/<name>@<release>/            once `deepfleet-runtime model activate` verified it
    <models>/<name>@current               the most recently activated release, switched atomically
(<models>: `deepfleet_models_dir`, else <home>/models; its free space is checked first: disk_room.py)
(the runtime serves the release its runtime release names: roles/release.py)
What a host lacks is decided by one small fact (ModelReleaseState), never by re-hashing weights.
Activation needs the runtime's venv, so the runtime role calls activate_model() after installing it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, deploy, operation
from pyinfra.api.exceptions import OperationError
from pyinfra.operations import files

from deepfleet.modelkeys import load_model_keys
from deepfleet.modelpack import ensure_release
from deepfleet_runtime.modelstore.keys import wrapping_kek_id
from deepfleet_runtime.modelstore.manifest import Manifest
from deepfleet_runtime.modelstore.release import KEY_FILE, MANIFEST_FILE, SIGNATURE_FILE
from deepfleet_runtime.modelstore.sealedkeys import credential_name, sealed_file_name

from .common import control_path, venv_dir
from .decrypt_room import check_decrypt_room
from .disk_room import check_model_disk
from .defaults import DEFAULTS
from .facts import ModelReleaseState
from .offline import model_release_from_bundle, offline
from .skip import skip_role
from .topology import holds_model
from .transfer import PartialUpload, resumable_upload, sealed_secret, secret_file, upload_owner


def models_dir() -> str:
    """Where releases live on the host: `deepfleet_models_dir` (a data disk), else <deepfleet_home>/models."""
    return host.data.deepfleet_models_dir or f"{host.data.deepfleet_home}/models"


def keys_sealed() -> bool:
    """KEKs are sealed with systemd-creds on hosts in systemd mode (a container cannot open them)."""
    return bool(host.data.model_keys_sealed) and host.data.runtime_mode == "systemd"


def host_keys_dir() -> str:
    """Where hosts keep the model keys (root only); the runtime gets a private copy at start."""
    return f"{host.data.deepfleet_config_dir}/keys"


def local_release() -> tuple[Path, Manifest]:
    """The encrypted release for this host's model_source, and its manifest."""
    data = host.data
    source = model_release_from_bundle(data.model_name) if offline() else control_path(data.model_source, "model_source")
    return _local_release(str(source), data.model_name,
                          str(control_path(data.model_keys_dir, "model_keys_dir")),
                          str(control_path(data.deepfleet_cache_dir, "deepfleet_cache_dir")))


@functools.lru_cache(maxsize=None)
def _local_release(source: str, name: str, keys_dir: str, cache_dir: str) -> tuple[Path, Manifest]:
    release_dir = ensure_release(Path(source), name, load_model_keys(Path(keys_dir)), Path(cache_dir), log=logger.info)
    manifest_path = release_dir / MANIFEST_FILE
    return release_dir, Manifest.from_bytes(manifest_path.read_bytes(), str(manifest_path))


@deploy("deepfleet model", data_defaults=DEFAULTS)
def model():
    """Push the fleet's model keys and the model release (only what the host lacks)."""
    if not holds_model(host):
        skip_role("Model", "not in the inventory's gpu_nodes group")
        return
    data = host.data
    keys = load_model_keys(control_path(data.model_keys_dir, "model_keys_dir"))
    release_dir, manifest = local_release()
    files.directory(name="Model keys directory", path=host_keys_dir(), user="root", group="root", mode="0700")
    # Only the KEK this release is wrapped with: a host never holds keys of releases it does not keep
    # (activation retires the others: deepfleet_runtime.modelstore.sealedkeys.retire_unused).
    key_id = wrapping_kek_id((release_dir / KEY_FILE).read_bytes(), str(release_dir / KEY_FILE))
    kek_path = keys.kek_files()[key_id]
    if keys_sealed():
        sealed_secret(name=f"Model key-encryption key {key_id}", src=str(kek_path),
                      dest=f"{host_keys_dir()}/{sealed_file_name(key_id)}", credential=credential_name(key_id))
    else:
        secret_file(name=f"Model key-encryption key {key_id}", src=str(kek_path),
                    dest=f"{host_keys_dir()}/{kek_path.name}", mode="0400")
    secret_file(name="Model manifest verify key", src=str(keys.verify_key_path),
                dest=f"{host_keys_dir()}/{keys.verify_key_path.name}", mode="0400")
    check_decrypt_room(sum(entry.size for entry in manifest.files))
    push_release(name=f"Model {manifest.release_name} ({manifest.encrypted_bytes / 1e9:.2f} GB encrypted)",
                 release_dir=str(release_dir), models_dir=models_dir(), keep=data.model_keep_releases,
                 max_rate_mb_s=data.model_push_max_rate_mb_s, transport=data.model_push_transport)


@operation()
def push_release(release_dir: str, models_dir: str, keep: int = 3, max_rate_mb_s: float | None = None,
                 transport: str = "ssh"):
    """
    Send an encrypted release into the host's staging directory, resuming any earlier push.

    + release_dir: the release on the control machine (deepfleet.modelpack)
    + models_dir: where releases live on the host
    + keep: releases the host keeps (for the disk-room check's message)
    + max_rate_mb_s: cap on the push bandwidth, MB/s
    + transport: "ssh" (the system's ssh client) or "sftp" (pyinfra's connection), see transfer.py

    Nothing is sent when the host holds the release complete (its marker names this manifest's
    SHA-256); then only a re-wrapped key.json is replaced, if the KEK changed. Refused before
    sending anything when the host's disk would not keep room for one more release.

    .. code:: python

        push_release(release_dir=".deepfleet/cache/model-releases/…/tiny@3f2a9c0d1e2b",
                     models_dir="/opt/deepfleet/models")
    """
    local = Path(release_dir)
    manifest_bytes = (local / MANIFEST_FILE).read_bytes()
    manifest = Manifest.from_bytes(manifest_bytes, str(local / MANIFEST_FILE))
    state = host.get_fact(ModelReleaseState, models_dir=models_dir, model_name=manifest.name, release=manifest.release)
    if state["complete"] == {"manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest()}:
        yield from _update_key_file(local, f"{models_dir}/{manifest.release_name}", state["kek_id"])
        return
    if state["complete"]:
        raise OperationError(f"{host.name} holds {manifest.release_name} encrypted under another data key "
                             f"(its manifest differs); push that same release directory, or remove "
                             f"{models_dir}/{manifest.release_name} on the host")
    staging = f"{models_dir}/.{manifest.release_name}.partial"
    sizes = {name: (local / name).stat().st_size for name in (MANIFEST_FILE, SIGNATURE_FILE, KEY_FILE)}
    sizes.update({entry.encrypted_path: entry.encrypted_size for entry in manifest.files})
    uploads, already_on_host = [], 0
    for name, size in sorted(sizes.items()):
        held = state["staged"].get(name, 0)
        held = held if held <= size else 0  # longer than it should be: damaged, send it again
        already_on_host += held
        if held < size:
            uploads.append(PartialUpload(str(local / name), f"{staging}/{name}", size, held))
    if not uploads:
        host.noop(f"{manifest.release_name} is staged complete, waiting for activation")
        return
    to_send = sum(upload.size - upload.offset for upload in uploads)
    if state["free_bytes"] is not None:  # unknown only in a dry run on a host without python3 yet
        problem = check_model_disk(host.name, models_dir, state, to_send, sum(sizes.values()), manifest.release, keep)
        if problem:
            raise OperationError(problem)
    directories = sorted({f"{staging}/{name}".rsplit("/", 1)[0] for name in sizes})
    yield StringCommand("install", "-d", "-m", "0700", *upload_owner(), *[QuoteString(d) for d in directories])
    yield from resumable_upload(uploads, f"model push {manifest.release_name}",
                                max_rate_mb_s * 1e6 if max_rate_mb_s else None, already_on_host, transport)


def _update_key_file(local: Path, remote_dir: str, host_kek_id: str | None):
    local_kek_id = wrapping_kek_id((local / KEY_FILE).read_bytes(), str(local / KEY_FILE))
    if host_kek_id == local_kek_id:
        host.noop(f"{remote_dir} is complete on the host")
        return
    remote = f"{remote_dir}/{KEY_FILE}"
    yield FileUploadCommand(str(local / KEY_FILE), remote, remote_temp_filename=host.get_temp_filename(remote))
    yield StringCommand("chown", f"root:{host.data.deepfleet_group}", QuoteString(remote))
    yield StringCommand("chmod", "0640", QuoteString(remote))
    # re-wrapped under the new KEK: the old one leaves the host unless a kept release still needs it
    yield StringCommand(f"{venv_dir()}/bin/deepfleet-runtime", "model", "retire-keys", "--keys-dir",
                        QuoteString(host_keys_dir()), "--models-dir", QuoteString(models_dir()))


def activate_model():
    """Verify the pushed release and make it current (the runtime role calls this after installing
    the runtime, whose `deepfleet-runtime model activate` does the work); returns the operation."""
    data = host.data
    _, manifest = local_release()
    return activate_release(name=f"Activate model {manifest.release_name} (verified first)",
                            venv=venv_dir(), models_dir=models_dir(), model_name=manifest.name,
                            release=manifest.release, keys_dir=host_keys_dir(), group=data.deepfleet_group,
                            keep=data.model_keep_releases)


@operation()
def activate_release(venv: str, models_dir: str, model_name: str, release: str, keys_dir: str,
                     group: str, keep: int):
    """
    Verify a pushed release on the host, switch `<name>@current` to it, keep the last `keep`.

    + venv: the runtime's virtualenv (its `deepfleet-runtime model activate` verifies and switches)
    + models_dir, model_name, release: which release
    + keys_dir: the host's model keys
    + group: the group that may read releases (the runtime's)
    + keep: releases kept, the current one included

    .. code:: python

        activate_release(venv="/opt/deepfleet/venv", models_dir="/opt/deepfleet/models",
                         model_name="tiny", release="3f2a9c0d1e2b", keys_dir="/etc/deepfleet/keys",
                         group="deepfleet", keep=3)
    """
    state = host.get_fact(ModelReleaseState, models_dir=models_dir, model_name=model_name, release=release)
    if state["current"] == release and state["complete"] and len(state["kept"]) <= keep \
            and not state["staged"] and not state["other_partials"]:
        host.noop(f"{model_name}@{release} is current")
        return
    yield StringCommand(f"{venv}/bin/deepfleet-runtime", "model", "activate", "--name", model_name,
                        "--release", release, "--models-dir", QuoteString(models_dir),
                        "--keys-dir", QuoteString(keys_dir), "--group", group, "--keep", str(keep))
