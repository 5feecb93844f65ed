"""The releases of one model on a host: verify a pushed release, switch to it atomically, keep the
last N, and switch back (rollback). Runs as root, through `deepfleet-runtime model ...`.

Layout under the models directory (/opt/deepfleet/models):
    .<name>@<release>.partial/   a push in progress (the model role writes here, resumably)
    <name>@<release>/            a complete, verified release (root:<group>, 0750/0640)
    <name>@current               symlink to the release the runtime serves, switched by rename
    <name>.releases.json         activation history, most recent last (for rollback and pruning)
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomicfile import fsync_dir, write_atomic
from .errors import ModelStoreError
from .keys import KeyDirectory
from .release import MANIFEST_FILE, Release

COMPLETE_MARKER = ".deepfleet-complete.json"


@dataclass(frozen=True)
class ModelReleases:
    """Paths of one model's releases in `models_dir`."""

    models_dir: Path
    name: str

    def release_dir(self, release: str) -> Path:
        return self.models_dir / f"{self.name}@{release}"

    def staging_dir(self, release: str) -> Path:
        return self.models_dir / f".{self.name}@{release}.partial"

    @property
    def current_link(self) -> Path:
        return self.models_dir / f"{self.name}@current"

    @property
    def history_file(self) -> Path:
        return self.models_dir / f"{self.name}.releases.json"

    def current(self) -> str | None:
        """The release the runtime serves, or None before the first activation."""
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        return target.rsplit("@", 1)[1]

    def history(self) -> list[str]:
        """Releases in activation order (most recent last) that are still on disk."""
        try:
            recorded = json.loads(self.history_file.read_text())["releases"]
        except FileNotFoundError:
            recorded = []
        return [release for release in recorded if self.is_complete(release)]

    def is_complete(self, release: str) -> bool:
        return (self.release_dir(release) / COMPLETE_MARKER).is_file()


def activate(releases: ModelReleases, release: str, keys: KeyDirectory, group: str, keep: int,
             progress: Callable[[int], None] | None = None) -> dict:
    """Make `release` the one the runtime serves, only after it verified.

    A pushed (staged) release is checked file by file: signature, data key, every chunk, every
    hash. A file that fails is removed from staging, so the next push sends it again, and nothing
    changes on the host. A kept release that becomes current again (rollback) is checked in full
    too: it has been at rest. Then `<name>@current` is switched by an atomic rename, the history
    updated, and releases beyond the last `keep` removed. Returns what was done.
    """
    with _locked(releases):
        previous = releases.current()
        if not releases.is_complete(release):
            _promote(releases, release, keys, group, progress)
        elif release != previous:
            Release.open(releases.release_dir(release), keys, releases.name).verify(progress)
        _switch(releases, release)
        removed = _prune(releases, keep)
    return {"release": release, "previous": previous, "removed": removed}


def rollback_target(releases: ModelReleases, to: str | None) -> str:
    """The release a rollback goes to: `to`, or the one active before the current one."""
    available = releases.history()
    current = releases.current()
    if to is not None:
        if not releases.is_complete(to):
            raise ModelStoreError(f"release {to} of {releases.name} is not on this host; kept releases: "
                                  f"{', '.join(reversed(available)) or 'none'}")
        return to
    older = [release for release in available if release != current]
    if not older:
        raise ModelStoreError(f"{releases.name} has no earlier release on this host to go back to "
                              f"(current: {current})")
    return older[-1]


def _promote(releases: ModelReleases, release: str, keys: KeyDirectory, group: str, progress) -> None:
    staging = releases.staging_dir(release)
    if not (staging / MANIFEST_FILE).is_file():
        raise ModelStoreError(f"release {release} of {releases.name} was not pushed to this host "
                              f"({staging} is missing); run the deploy, which pushes it first")
    opened = Release.open(staging, keys, releases.name)
    if opened.manifest.release != release:
        raise ModelStoreError(f"{staging / MANIFEST_FILE} is release {opened.manifest.release}, not {release}")
    for entry in opened.manifest.files:
        try:
            for block in opened.iter_plaintext(entry.path):
                if progress:
                    progress(len(block))
        except ModelStoreError as exc:
            (staging / entry.encrypted_path).unlink(missing_ok=True)
            raise ModelStoreError(f"{exc} (removed it from {staging}; the next deploy sends it again)",
                                  entry.path) from None
    _sync_files(staging)  # the push does not fsync; the release must survive a crash once current
    manifest_digest = hashlib.sha256((staging / MANIFEST_FILE).read_bytes()).hexdigest()
    write_atomic(staging / COMPLETE_MARKER, (json.dumps({"manifest_sha256": manifest_digest}) + "\n").encode())
    _own_by_root(staging, group)
    os.rename(staging, releases.release_dir(release))
    fsync_dir(releases.models_dir)


def _switch(releases: ModelReleases, release: str) -> None:
    link = releases.current_link
    if releases.current() != release:
        temporary = link.with_name(f".{link.name}.new")
        temporary.unlink(missing_ok=True)
        os.symlink(releases.release_dir(release).name, temporary)
        os.replace(temporary, link)
    history = [r for r in releases.history() if r != release] + [release]
    write_atomic(releases.history_file, (json.dumps({"releases": history}, indent=1) + "\n").encode())
    fsync_dir(releases.models_dir)


def _prune(releases: ModelReleases, keep: int) -> list[str]:
    """Remove complete releases beyond the `keep` most recently active, and every unfinished push
    (the release being activated has been promoted by now)."""
    history = releases.history()
    kept = set(history[-max(keep, 1):])
    removed = []
    for path in sorted(releases.models_dir.glob(f"{releases.name}@*")):
        release = path.name.rsplit("@", 1)[1]
        if path.is_symlink() or release in kept:
            continue
        shutil.rmtree(path)
        removed.append(release)
    for path in releases.models_dir.glob(f".{releases.name}@*.partial"):
        shutil.rmtree(path)  # pushes of releases the inventory no longer names: their space comes back
    if removed:
        remaining = [r for r in history if r not in removed]
        write_atomic(releases.history_file, (json.dumps({"releases": remaining}, indent=1) + "\n").encode())
    return removed


def _sync_files(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def _own_by_root(directory: Path, group: str) -> None:
    """root owns a release; the service group may read it, nobody else."""
    gid = grp.getgrnam(group).gr_gid
    for root, _, files in os.walk(directory):
        os.chown(root, 0, gid)
        os.chmod(root, 0o750)
        for name in files:
            os.chown(os.path.join(root, name), 0, gid)
            os.chmod(os.path.join(root, name), 0o640)


@contextlib.contextmanager
def _locked(releases: ModelReleases):
    releases.models_dir.mkdir(parents=True, exist_ok=True)
    with open(releases.models_dir / f".{releases.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
