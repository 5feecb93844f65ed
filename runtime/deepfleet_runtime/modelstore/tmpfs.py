"""A private directory in memory (tmpfs or ramfs) for model files an engine can only read from disk.

The transformers engine gets its weights straight from memory; the few small files its loaders
read by path (config, tokenizer) and the whole release for engines that only load from files (vLLM,
llama.cpp: decrypted_copy) are decrypted here. The directory is 0700, checked to be on a memory filesystem, and
wiped (files overwritten with zeros, then removed) when the block ends, loaded or not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ModelStoreError
from .keys import KeyDirectory
from .release import Release

MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}


def default_parent() -> Path:
    """$DEEPFLEET_DECRYPT_DIR (the unit's own tmpfs, sized by runtime_decrypt_tmpfs_size) when set, else
    systemd's private RuntimeDirectory when the service has one, else /dev/shm."""
    return Path(os.environ.get("DEEPFLEET_DECRYPT_DIR") or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
                or "/dev/shm")


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` is on, from /proc/self/mounts (longest mount point wins)."""
    path = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            mount_point = fields[1].replace("\\040", " ")
            inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, fields[2]
    return fstype


@contextlib.contextmanager
def private_memory_dir(parent: Path | None = None) -> Iterator[Path]:
    """A fresh 0700 directory on a memory filesystem under `parent`, wiped on exit."""
    parent = Path(parent or default_parent())
    fstype = filesystem_type(parent)
    if fstype not in MEMORY_FILESYSTEMS:
        raise ModelStoreError(f"{parent} is on {fstype}, not in memory; decrypted model files must never "
                              "reach a disk: give the runtime a tmpfs (systemd RuntimeDirectory=, or /dev/shm)")
    directory = Path(tempfile.mkdtemp(prefix="deepfleet-model-", dir=parent))  # mkdtemp: mode 0700
    try:
        yield directory
    finally:
        wipe(directory)


@contextlib.contextmanager
def decrypted_copy(release_dir: Path, keys_dir: Path | None, parent: Path | None = None) -> Iterator[Path]:
    """Every file of the encrypted release `release_dir`, decrypted and verified into a private
    memory directory (wiped on exit, also when a file fails): for engines that load only from
    files. ModelStoreError names the file or the missing keys."""
    if keys_dir is None:
        raise ModelStoreError(f"{release_dir} is an encrypted release; set model.keys_dir in runtime.yaml to the "
                              "directory with the fleet's model keys")
    release = Release.open(Path(release_dir), KeyDirectory(keys_dir))
    with private_memory_dir(parent) as directory:
        needed = sum(entry.size for entry in release.manifest.files)
        room = os.statvfs(directory)
        if needed > room.f_bavail * room.f_frsize:
            raise ModelStoreError(f"{directory.parent} has {room.f_bavail * room.f_frsize / 2**30:.1f} GiB free in "
                                  f"memory, and the decrypted {release.manifest.release_name} needs "
                                  f"{needed / 2**30:.1f} GiB: give it a tmpfs of its own with the inventory setting "
                                  "runtime_decrypt_tmpfs_size (e.g. \"200G\"; the host needs that much RAM)")
        for entry in release.manifest.files:
            target = directory / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                for block in release.iter_plaintext(entry.path):
                    handle.write(block)
        yield directory


def wipe(directory: Path) -> None:
    """Overwrite every file under `directory` with zeros, then remove the tree."""
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError), open(path, "r+b") as handle:
                size = handle.seek(0, 2)
                handle.seek(0)
                for start in range(0, size, 1 << 20):
                    handle.write(bytes(min(1 << 20, size - start)))
    shutil.rmtree(directory, ignore_errors=True)
