"""Take a staged release away from whoever uploaded it, without following links.

The model role pushes a release into a staging directory owned by the SSH login user. Before
root reads, verifies or re-owns anything there, `take_over` makes every directory root's (so
nobody else can add, rename or swap an entry any more), then walks the tree through directory
file descriptors with O_NOFOLLOW: a symbolic link, a hard link, a device or a file the manifest
does not list is removed and the activation refused, so no chown or chmod ever reaches a file
outside the release. `hand_over` then gives the verified tree to the service group, the same way.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import ModelStoreError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def take_over(directory: Path) -> None:
    """Make `directory` and everything in it root's only (directories 0700, files 0600), each
    directory before its entries are looked at; remove and refuse whatever is not a plain
    directory or a singly linked regular file. Raises ModelStoreError naming what was removed."""
    refused: list[str] = []

    def visit(fd: int, relative: str, info: os.stat_result) -> bool:
        if stat.S_ISREG(info.st_mode) and info.st_nlink != 1:
            return _refuse(refused, relative, "a hard link")
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o700 if stat.S_ISDIR(info.st_mode) else 0o600)
        return True

    _walk(directory, visit, refused)
    _raise_if(refused, directory)


def remove_unlisted(directory: Path, expected: set[str]) -> None:
    """Remove and refuse every file or directory in a taken-over `directory` that `expected`
    (paths relative to it, from the signed manifest) does not list."""
    refused: list[str] = []
    prefixes = {str(parent) for path in expected for parent in Path(path).parents}

    def visit(fd: int, relative: str, info: os.stat_result) -> bool:
        listed = relative in (prefixes if stat.S_ISDIR(info.st_mode) else expected)
        return listed or _refuse(refused, relative, "not in the manifest")

    _walk(directory, visit, refused)
    _raise_if(refused, directory)


def _raise_if(refused: list[str], directory: Path) -> None:
    if refused:
        raise ModelStoreError(f"{directory} held {', '.join(refused)}: removed; a release holds only "
                              f"the plain files its manifest lists. Run the deploy again to push it cleanly")


def hand_over(directory: Path, group_id: int) -> None:
    """Give a taken-over, verified tree to root:`group_id` (directories 0750, files 0640)."""
    refused: list[str] = []

    def visit(fd: int, relative: str, info: os.stat_result) -> bool:
        os.fchown(fd, 0, group_id)
        os.fchmod(fd, 0o750 if stat.S_ISDIR(info.st_mode) else 0o640)
        return True

    _walk(directory, visit, refused)
    _raise_if(refused, directory)  # only root can have changed the tree since take_over


def _refuse(refused: list[str], relative: str, why: str) -> bool:
    refused.append(f"{relative} ({why})")
    return False


def _walk(directory: Path, visit: Callable[[int, str, os.stat_result], bool], refused: list[str]) -> None:
    try:
        top = os.open(directory, _DIR_FLAGS)
    except OSError as exc:
        raise ModelStoreError(f"{directory} is not a plain directory ({exc.strerror}); remove it and "
                              f"run the deploy again") from None
    try:
        if visit(top, ".", os.fstat(top)):
            _walk_fd(top, "", visit, refused)
    finally:
        os.close(top)


def _walk_fd(dir_fd: int, prefix: str, visit, refused: list[str]) -> None:
    for name in sorted(os.listdir(dir_fd)):
        relative = f"{prefix}{name}"
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            why = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            _remove(dir_fd, name, info, refused, relative, why)
            continue
        # the directory is root's already, so nobody can swap the entry between stat and open
        fd = os.open(name, _DIR_FLAGS if stat.S_ISDIR(info.st_mode) else _FILE_FLAGS, dir_fd=dir_fd)
        try:
            opened = os.fstat(fd)
            if not visit(fd, relative, opened):
                _remove(dir_fd, name, opened, None, relative, "")
            elif stat.S_ISDIR(opened.st_mode):
                _walk_fd(fd, f"{relative}/", visit, refused)
        finally:
            os.close(fd)


def _remove(dir_fd: int, name: str, info: os.stat_result, refused: list[str] | None, relative: str,
            why: str) -> None:
    """Remove one entry without following it (a link goes, never its target)."""
    if refused is not None:
        _refuse(refused, relative, why)
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
