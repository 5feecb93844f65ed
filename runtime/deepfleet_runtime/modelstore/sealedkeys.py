"""Model keys sealed on the host with systemd's encrypted credentials, and only those in use.

On a host in systemd mode, each KEK sits in /etc/deepfleet/keys as `model-kek-<id>.cred`, made by
`systemd-creds encrypt`: sealed to the host's TPM2 and its credential secret
(/var/lib/systemd/credential.secret) where a TPM2 exists, else to that secret alone. Root reads
them through `systemd-creds decrypt` (KeyDirectory does, for activation); the runtime unit's
privileged ExecStartPre (`deepfleet-runtime model unseal-keys`) decrypts them into the service's
private in-memory RuntimeDirectory, owned by the service user, gone when it stops.

A host keeps only the KEKs its kept releases are wrapped with: `retire_unused` removes the others
after each activation, so rotating a KEK or pruning a release takes its key off the host.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..atomicfile import fsync_dir, write_atomic
from .errors import ModelStoreError

SEALED_SUFFIX = ".cred"
KEK_PREFIX = "model-kek-"


def sealed_file_name(key_id: str) -> str:
    return f"{KEK_PREFIX}{key_id}{SEALED_SUFFIX}"


def credential_name(key_id: str) -> str:
    """The name sealed into the credential (systemd refuses it under another name)."""
    return f"{KEK_PREFIX}{key_id}.key"


def seal(plain: Path, dest: Path, key_id: str) -> None:
    """Seal the KEK file `plain` into `dest` (root 0400, written atomically)."""
    partial = dest.with_name(f".{dest.name}.partial")
    _systemd_creds(["encrypt", f"--name={credential_name(key_id)}", str(plain), str(partial)], dest)
    os.chmod(partial, 0o400)
    os.replace(partial, dest)
    fsync_dir(dest.parent)


def unseal(path: Path, key_id: str) -> str:
    """The text of the KEK sealed in `path`."""
    return _systemd_creds(["decrypt", f"--name={credential_name(key_id)}", str(path), "-"], path)


def unseal_into(keys_dir: Path, dest: Path, uid: int, gid: int) -> list[str]:
    """Write every key of `keys_dir` (sealed KEKs decrypted, plain files as they are) into `dest`,
    0400 and owned by uid:gid: the runtime's private copy. Returns the file names written."""
    dest.mkdir(mode=0o700, exist_ok=True)
    os.chown(dest, uid, gid)
    written = []
    for path in sorted(Path(keys_dir).iterdir()):
        if path.name.startswith(KEK_PREFIX) and path.name.endswith(SEALED_SUFFIX):
            key_id = path.name[len(KEK_PREFIX):-len(SEALED_SUFFIX)]
            name, content = credential_name(key_id), unseal(path, key_id).encode()
        elif path.is_file() and not path.name.startswith("."):
            name, content = path.name, path.read_bytes()
        else:
            continue
        write_atomic(dest / name, content, mode=0o400)
        os.chown(dest / name, uid, gid)
        written.append(name)
    return written


def retire_unused(keys_dir: Path, models_dir: Path) -> list[str]:
    """Remove every KEK (sealed or not) from `keys_dir` that no kept release in `models_dir` is
    wrapped with; returns the ids removed."""
    from .keys import wrapping_kek_id

    in_use = set()
    for key_file in Path(models_dir).glob("*@*/key.json"):  # pushes still staged (.<name>@<id>.partial) too
        if key_file.parent.is_symlink():  # <name>@current points at one of the others
            continue
        try:
            in_use.add(wrapping_kek_id(key_file.read_bytes(), str(key_file)))
        except (ModelStoreError, OSError):
            continue  # an unreadable key.json (a staged push, written by the login user) keeps nothing
    removed = []
    for path in sorted(Path(keys_dir).glob(f"{KEK_PREFIX}*")):
        key_id = path.name[len(KEK_PREFIX):].rsplit(".", 1)[0]
        if key_id not in in_use:
            path.unlink()
            removed.append(key_id)
    if removed:
        fsync_dir(Path(keys_dir))
    return sorted(set(removed))


def _systemd_creds(arguments: list[str], where: Path) -> str:
    try:
        result = subprocess.run(["systemd-creds", *arguments], capture_output=True, text=True)
    except FileNotFoundError:
        raise ModelStoreError("systemd-creds is not installed; sealed model keys need systemd 250 or newer "
                              "(or set model_keys_sealed: false)") from None
    if result.returncode != 0:
        error = result.stderr.strip().splitlines()[-1:] or ["failed"]
        raise ModelStoreError(f"systemd-creds {arguments[0]} {where}: {error[0]} (a sealed key opens only on "
                              "the host that sealed it; deploy the model keys again)")
    return result.stdout
