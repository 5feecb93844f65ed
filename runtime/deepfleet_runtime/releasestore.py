"""Versioned directories on a host with an atomically switched `current` link, an activation
history and keep-the-last-N pruning: the one mechanism behind model releases
(modelstore/hostreleases.py) and runtime releases (runtimereleases.py).

Layout under `root`, for a store with a `name` (model releases) and without (runtime releases):
    <name>@<release>/   or  <release>/       a complete release (holds COMPLETE_MARKER)
    .<name>@<release>.partial/ or .<release>.partial/   one being written
    <name>@current      or  current          symlink to the active release, switched by rename
    <name>.releases.json or releases.json    activation history, most recent last
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomicfile import fsync_dir, write_atomic

COMPLETE_MARKER = ".deepfleet-complete.json"


@dataclass(frozen=True)
class ReleaseStore:
    """The releases kept in `root` (named `<name>@<release>` when `name` is set)."""

    root: Path
    name: str = ""

    def _entry(self, release: str) -> str:
        return f"{self.name}@{release}" if self.name else release

    def release_dir(self, release: str) -> Path:
        return self.root / self._entry(release)

    def staging_dir(self, release: str) -> Path:
        return self.root / f".{self._entry(release)}.partial"

    @property
    def current_link(self) -> Path:
        return self.root / self._entry("current")

    @property
    def history_file(self) -> Path:
        return self.root / (f"{self.name}.releases.json" if self.name else "releases.json")

    def current(self) -> str | None:
        """The active release, or None before the first activation."""
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        return Path(target).name.rsplit("@", 1)[-1]

    def history(self) -> list[str]:
        """Releases in activation order (most recent last) that are still on disk."""
        try:
            recorded = json.loads(self.history_file.read_text())["releases"]
        except FileNotFoundError:
            recorded = []
        return [release for release in recorded if self.is_complete(release)]

    def is_complete(self, release: str) -> bool:
        return (self.release_dir(release) / COMPLETE_MARKER).is_file()

    def previous(self, to: str | None = None) -> str:
        """The release a rollback goes to: `to` (which must be kept here), or the one active
        before the current one. Raises LookupError naming what is kept."""
        available = self.history()
        current = self.current()
        label = self.name or "the runtime"
        if to is not None:
            if not self.is_complete(to):
                raise LookupError(f"release {to} of {label} is not on this host; kept releases: "
                                  f"{', '.join(reversed(available)) or 'none'}")
            return to
        older = [release for release in available if release != current]
        if not older:
            raise LookupError(f"{label} has no earlier release on this host to go back to (current: {current})")
        return older[-1]

    def mark_complete(self, staging: Path, record: dict) -> None:
        """Write the completion marker (fsynced) into a staged release."""
        write_atomic(staging / COMPLETE_MARKER, (json.dumps(record) + "\n").encode())

    def promote(self, release: str) -> None:
        """Rename a complete staging directory to its release directory (durably)."""
        os.rename(self.staging_dir(release), self.release_dir(release))
        fsync_dir(self.root)

    def switch(self, release: str) -> None:
        """Point `current` at `release` by an atomic rename and record it as the most recent."""
        link = self.current_link
        if self.current() != release:
            temporary = link.with_name(f".{link.name}.new")
            temporary.unlink(missing_ok=True)
            os.symlink(self.release_dir(release).name, temporary)
            os.replace(temporary, link)
        history = [r for r in self.history() if r != release] + [release]
        self._write_history(history)
        fsync_dir(self.root)

    def prune(self, keep: int) -> list[str]:
        """Remove complete releases beyond the `keep` most recently active, and every unfinished
        one (call it after the release being activated was promoted). Returns the removed ids."""
        history = self.history()
        kept = set(history[-max(keep, 1):])
        removed = []
        for path in sorted(self.root.glob(self._entry("*"))):
            if path.is_symlink() or not path.is_dir() or path.name.startswith("."):
                continue
            release = path.name.rsplit("@", 1)[-1]
            if release in kept:
                continue
            shutil.rmtree(path)
            removed.append(release)
        for path in self.root.glob(f".{self._entry('*')}.partial"):
            shutil.rmtree(path)  # unfinished writes of releases nobody activates: their space comes back
        if removed:
            self._write_history([r for r in history if r not in removed])
        return removed

    @contextlib.contextmanager
    def locked(self):
        """Hold the store's lock (one activation or rollback at a time)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock_name = f".{self.name}.lock" if self.name else ".lock"
        with open(self.root / lock_name, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write_history(self, releases: list[str]) -> None:
        write_atomic(self.history_file, (json.dumps({"releases": releases}, indent=1) + "\n").encode())
