"""Backups of the control state (`deepfleet backup create|verify|restore`).

What goes in: every regular file and directory under the state dir (the CA and its key, hosts'
keys and certificates, the model keys and sequences.json, the bundle signing keys, the API
keyring, rollout records, pulled audit logs), with its mode; not the cache dir nor demo/ (both
rebuilt on demand). The archive is a tar stream under `state/`, then `manifest.json` (every
file's path, size, mode and SHA-256), sealed and signed by deepfleet/backupformat.py: signed by
the model signing key when the state has one, else by a one-off key named in the header.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import tarfile
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from . import backupformat as fmt
from .atomicfile import fsync_dir
from .backupformat import BackupError
from .keyfiles import load_private_key

MANIFEST = "manifest.json"
PREFIX = "state/"
SIGNING_KEY = Path("model-keys") / "model-signing.key"
VERIFY_KEY = "model-keys/model-verify.pub"
REBUILT = ("demo",)  # besides the cache dir


def collect(state: Path, cache: Path) -> tuple[list[Path], list[str]]:
    """The paths (relative to `state`) that go into a backup, each directory before its content;
    and those skipped because they are not regular files or directories (links, sockets)."""
    skip = {state / name for name in REBUILT} | {cache}
    keep, skipped = [], []
    for root, dirs, files in os.walk(state):
        here = Path(root)
        kept = []
        for name in sorted(dirs):
            path = here / name
            if path in skip:
                continue
            if path.is_symlink():
                skipped.append(str(path.relative_to(state)))
                continue
            kept.append(name)
            keep.append(path.relative_to(state))
        dirs[:] = kept
        for name in sorted(files):
            path = here / name
            if stat.S_ISREG(path.lstat().st_mode):
                keep.append(path.relative_to(state))
            else:
                skipped.append(str(path.relative_to(state)))
    return keep, skipped


def create_backup(state: Path, cache: Path, out: Path, lock: dict, keys: bytes, *, force: bool = False) -> dict:
    """Write the backup of `state` to `out` (0600, atomically); returns its manifest."""
    state, out = Path(state), Path(out).resolve()
    if not state.is_dir() or not any(state.iterdir()):
        raise BackupError(f"{state} holds no state to back up; set DEEPFLEET_HOME to the state dir")
    if out.is_relative_to(state):
        raise BackupError(f"{out} is inside the state dir {state}; write the backup somewhere else (--out)")
    if out.exists() and not force:
        raise BackupError(f"{out} exists; choose another --out, or pass --force to replace it")
    signer, kind = _signer(state)
    paths, skipped = collect(state, Path(cache).resolve())
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest = {"format": 1, "created": created, "host": socket.gethostname(), "files": [], "dirs": [],
                "skipped": skipped}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            writer = fmt.Writer(handle, lock, keys, signer, kind, created)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel in paths:
                    _add(tar, state, rel, manifest)
                data = json.dumps(manifest, indent=1, sort_keys=True).encode()
                tar.addfile(_info(MANIFEST, len(data), 0o600), io.BytesIO(data))
            writer.close()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return manifest


def verify_backup(path: Path, passphrase: str | None = None, identity=None, signer: bytes | None = None) -> dict:
    """Check the archive at `path` whole (structure, key, every chunk, signature, every file's hash)
    without writing anything; returns its header and manifest."""
    container, key = _open(path, passphrase, identity, signer)
    manifest = _walk(container, key, None)
    return {"header": container.header, "manifest": manifest}


def restore_backup(path: Path, state: Path, passphrase: str | None = None, identity=None,
                   signer: bytes | None = None, *, force: bool = False) -> dict:
    """Verify the archive, then bring it back as `state` (via a temporary sibling, renamed into
    place); with `force`, an existing state dir is moved aside to <state>.before-restore-<time>."""
    state = Path(state)
    if state.exists() and any(state.iterdir()) and not force:
        raise BackupError(f"{state} already holds state; restore into an empty DEEPFLEET_HOME, or pass --force "
                          f"(the current state is then kept as {state.name}.before-restore-<time>)")
    container, key = _open(path, passphrase, identity, signer)
    _walk(container, key, None)  # everything checks out before anything is written
    state.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{state.name}.restore-", dir=state.parent))
    try:
        manifest = _walk(container, key, staging)
        aside = None
        if state.exists() and any(state.iterdir()):
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            aside = state.with_name(f"{state.name}.before-restore-{stamp}")
            os.replace(state, aside)
        os.replace(staging, state)
        if aside and (aside / "cache").is_dir() and not (state / "cache").exists():
            os.replace(aside / "cache", state / "cache")  # the cache is not in backups: keep using it
        fsync_dir(state.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"header": container.header, "manifest": manifest, "moved_aside": aside}


def _signer(state: Path) -> tuple[ed25519.Ed25519PrivateKey, str]:
    if (state / SIGNING_KEY).is_file():
        key = load_private_key(state / SIGNING_KEY, BackupError)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key, "model-signing"
    return ed25519.Ed25519PrivateKey.generate(), "one-off"


def _add(tar: tarfile.TarFile, state: Path, rel: Path, manifest: dict) -> None:
    path, name = state / rel, PREFIX + rel.as_posix()
    if path.is_dir():
        mode = stat.S_IMODE(path.stat().st_mode)
        tar.addfile(_info(name, 0, mode, tarfile.DIRTYPE))
        manifest["dirs"].append({"path": rel.as_posix(), "mode": f"{mode:04o}"})
        return
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        mode, hashing = stat.S_IMODE(info.st_mode), _Hashing(handle)
        tar.addfile(_info(name, info.st_size, mode), hashing)
    manifest["files"].append({"path": rel.as_posix(), "size": info.st_size, "mode": f"{mode:04o}",
                              "sha256": hashing.digest.hexdigest()})


class _Hashing:
    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size=-1):
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _info(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, 0
    return info


def _open(path: Path, passphrase, identity, signer: bytes | None):
    container, body_digest = fmt.read_container(Path(path))
    signed = container.signature_valid(body_digest)
    try:
        key = fmt.unlock(container, passphrase, identity)
    except BackupError as exc:
        if signed or "sealed" in str(exc) or "header" in str(exc):
            raise
        raise BackupError(f"{path}: the header (bytes 0-{container.header_end - 1}) was altered, or this is "
                          f"the wrong key for an archive whose signature was replaced ({exc})") from None
    if not signed:
        for _ in fmt.plaintext(container, key):  # names the altered chunk, if one is
            pass
        raise BackupError(f"{path}: the signature (bytes {container.signature_offset}-"
                          f"{container.signature_offset + 63}) does not match this archive: it was replaced or "
                          "altered; use another copy of the backup")
    if signer is not None and signer != container.signer_public:
        raise BackupError(f"{path} is signed by key {fmt.key_id(container.signer_public)}, not by the key you "
                          f"trust ({fmt.key_id(signer)}); it was made elsewhere")
    return container, key


def _walk(container: fmt.Container, key: bytes, into: Path | None) -> dict:
    """Read the tar stream, hash every file, check it against the manifest; write into `into` when given."""
    seen: dict[str, dict] = {}
    manifest = None
    stream = _ChunkStream(fmt.plaintext(container, key))
    dirs: list[tuple[Path, int]] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.name == MANIFEST and member.isfile():
                    manifest = json.loads(tar.extractfile(member).read())
                    continue
                rel = _safe(member.name)
                if member.isdir():
                    seen[rel] = {"dir": True, "mode": f"{member.mode:04o}"}
                    if into is not None:
                        (into / rel).mkdir(mode=0o700, parents=True, exist_ok=True)
                        dirs.append((into / rel, member.mode))
                    continue
                if not member.isfile():
                    raise BackupError(f"the archive holds {member.name!r}, which is not a file: it was not made by "
                                      "deepfleet backup")
                seen[rel] = {"size": member.size, "mode": f"{member.mode:04o}",
                             "sha256": _copy(tar.extractfile(member), into / rel if into else None, member.mode)}
    except tarfile.TarError as exc:
        raise BackupError(f"{container.path}: the content is not a whole archive ({exc})") from None
    if manifest is None:
        raise BackupError(f"{container.path} has no manifest; it is truncated or was not made by deepfleet backup")
    _check(manifest, seen, container)
    for path, mode in reversed(dirs):
        os.chmod(path, mode)
    if into is not None:
        for path in [into, *(p for p, _ in dirs)]:
            fsync_dir(path)
    return manifest


def _check(manifest: dict, seen: dict, container: fmt.Container) -> None:
    listed = {f["path"]: {"size": f["size"], "mode": f["mode"], "sha256": f["sha256"]} for f in manifest["files"]}
    listed.update({d["path"]: {"dir": True, "mode": d["mode"]} for d in manifest["dirs"]})
    for name in sorted(set(listed) | set(seen)):
        if listed.get(name) != seen.get(name):
            raise BackupError(f"{container.path}: {name} does not match the manifest (listed {listed.get(name)}, "
                              f"found {'a file' if name in seen else 'nothing'}); the archive was not made whole")
    if container.header["signer"]["kind"] == "model-signing":
        public = ed25519.Ed25519PublicKey.from_public_bytes(container.signer_public).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if listed.get(VERIFY_KEY, {}).get("sha256") != hashlib.sha256(public).hexdigest():
            raise BackupError(f"{container.path} is signed by key {fmt.key_id(container.signer_public)}, which is "
                              f"not the model signing key whose {VERIFY_KEY} it holds; it was not made by this fleet")


def _copy(source, dest: Path | None, mode: int) -> str:
    digest = hashlib.sha256()
    handle = None
    if dest is not None:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o700), "wb")
    try:
        while block := source.read(1 << 16):
            digest.update(block)
            if handle:
                handle.write(block)
        if handle:
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
    finally:
        if handle:
            handle.close()
    return digest.hexdigest()


def _safe(name: str) -> str:
    rel = name[len(PREFIX):] if name.startswith(PREFIX) else None
    parts = Path(rel).parts if rel else ()
    if not rel or Path(rel).is_absolute() or ".." in parts or not parts:
        raise BackupError(f"the archive holds the path {name!r}, outside state/: it was not made by deepfleet backup")
    return Path(rel).as_posix()


class _ChunkStream(io.RawIOBase):
    """The decrypted chunks as one readable stream (what tarfile reads)."""

    def __init__(self, chunks):
        self._chunks, self._pending = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            self._pending = next(self._chunks, None)
            if self._pending is None:
                self._pending = b""
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
