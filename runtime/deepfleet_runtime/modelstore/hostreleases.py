"""The releases of one model on a host: verify a pushed release, switch to it atomically, keep the
last N, and switch back (rollback). Runs as root, through `deepfleet-runtime model ...`.

Layout under the models directory (/opt/deepfleet/models), kept by releasestore.ReleaseStore:
    .<name>@<release>.partial/   a push in progress (the model role writes here, resumably)
    <name>@<release>/            a complete, verified release (root:<group>, 0750/0640)
    <name>@current               symlink to the release the runtime serves, switched by rename
    <name>.releases.json         activation history, most recent last (for rollback and pruning)
    <name>.sequence.json         the highest release number served (recorded once the runtime
                                 answered /ready on it): a lower one is refused unless rolled back
                                 to (`deepfleet rollback`), so an old signed release cannot be
                                 replayed onto the host; one that never served (its runtime failed
                                 and the deploy rolled back) raises nothing
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..atomicfile import fsync_dir, write_atomic
from ..releasestore import COMPLETE_MARKER, ReleaseStore
from .errors import ModelStoreError
from .keys import KeyDirectory
from .lockdown import hand_over, remove_unlisted, take_over
from .manifest import Manifest
from .release import KEY_FILE, MANIFEST_FILE, SIGNATURE_FILE, Release
from .sealedkeys import retire_unused


class ModelReleases(ReleaseStore):
    """The releases of model `name` in `models_dir` (a ReleaseStore named after the model)."""

    def __init__(self, models_dir: Path, name: str):
        super().__init__(Path(models_dir), name)

    @property
    def models_dir(self) -> Path:
        return self.root

    @property
    def sequence_file(self) -> Path:
        return self.root / f"{self.name}.sequence.json"

    def highest_sequence(self) -> int:
        """The highest release number this host has served of the model (0: none yet)."""
        try:
            return int(json.loads(self.sequence_file.read_text())["highest"])
        except FileNotFoundError:
            return 0

    def record_sequence(self, sequence: int) -> None:
        if sequence > self.highest_sequence():
            write_atomic(self.sequence_file, (json.dumps({"highest": sequence}) + "\n").encode())


def activate(releases: ModelReleases, release: str, keys: KeyDirectory, group: str, keep: int,
             progress: Callable[[int], None] | None = None, allow_older: bool = False) -> dict:
    """Make `release` the one the runtime serves, only after it verified.

    A pushed (staged) release is checked file by file: signature, data key, every chunk, every
    hash. A file that fails is removed from staging, so the next push sends it again, and nothing
    changes on the host. A kept release that becomes current again (rollback) is checked in full
    too: it has been at rest. Then `<name>@current` is switched by an atomic rename, the history
    updated, releases beyond the last `keep` removed, and the KEKs no kept release uses with them.
    A release numbered below the highest the host has served is refused, unless `allow_older` (a
    rollback). Returns what was done.
    """
    with releases.locked():
        previous = releases.current()
        if not releases.is_complete(release):
            _promote(releases, release, keys, group, progress, allow_older)
        elif release != previous:
            opened = Release.open(releases.release_dir(release), keys, releases.name)
            _check_not_older(releases, opened.manifest, allow_older)
            opened.verify(progress)
        releases.switch(release)
        removed = releases.prune(keep)
        retired = retire_unused(keys.path, releases.models_dir)  # keys of pruned releases go too
    return {"release": release, "previous": previous, "removed": removed, "retired_keys": retired}


def record_served(releases: ModelReleases, release: str) -> int:
    """Record `release`'s number as served: the deploy calls this once the runtime answered /ready on
    it (`deepfleet-runtime wait-ready --served-model DIR`). From then on a release numbered below it
    is refused unless rolled back to. Returns the number recorded."""
    with releases.locked():
        manifest_file = releases.release_dir(release) / MANIFEST_FILE
        sequence = Manifest.from_bytes(manifest_file.read_bytes(), str(manifest_file)).sequence  # verified at activation
        releases.record_sequence(sequence)
    return sequence


def rollback_target(releases: ModelReleases, to: str | None) -> str:
    """The release a rollback goes to: `to`, or the one active before the current one."""
    try:
        return releases.previous(to)
    except LookupError as exc:
        raise ModelStoreError(str(exc)) from None


def _check_not_older(releases: ModelReleases, manifest, allow_older: bool) -> None:
    highest = releases.highest_sequence()
    if manifest.sequence < highest and not allow_older:
        raise ModelStoreError(f"{manifest.release_name} is release number {manifest.sequence} of {releases.name}; "
                              f"this host has served number {highest}, and an older signed release is not "
                              "taken back by a deploy. Go back with `deepfleet rollback`, or deploy a newer release")


def _promote(releases: ModelReleases, release: str, keys: KeyDirectory, group: str, progress,
             allow_older: bool) -> None:
    staging = releases.staging_dir(release)
    if not os.path.lexists(staging / MANIFEST_FILE):
        raise ModelStoreError(f"release {release} of {releases.name} was not pushed to this host "
                              f"({staging} is missing); run the deploy, which pushes it first")
    take_over(staging)  # from here on only root can change the staged tree; no links left in it
    opened = Release.open(staging, keys, releases.name)
    remove_unlisted(staging, {MANIFEST_FILE, SIGNATURE_FILE, KEY_FILE, COMPLETE_MARKER,
                              *(entry.encrypted_path for entry in opened.manifest.files)})
    if opened.manifest.release != release:
        raise ModelStoreError(f"{staging / MANIFEST_FILE} is release {opened.manifest.release}, not {release}")
    _check_not_older(releases, opened.manifest, allow_older)
    for entry in opened.manifest.files:
        try:
            for block in opened.iter_plaintext(entry.path):
                if progress:
                    progress(len(block))
        except ModelStoreError as exc:
            (staging / entry.encrypted_path).unlink(missing_ok=True)
            raise ModelStoreError(f"{exc} (removed it from {staging}; the next deploy sends it again)",
                                  entry.path) from None
    sync_tree(staging)  # the push does not fsync; the release must survive a crash once current
    manifest_digest = hashlib.sha256((staging / MANIFEST_FILE).read_bytes()).hexdigest()
    releases.mark_complete(staging, {"manifest_sha256": manifest_digest})
    hand_over(staging, grp.getgrnam(group).gr_gid)
    releases.promote(release)


def sync_tree(directory: Path) -> None:
    """fsync every file and directory under `directory`."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))

