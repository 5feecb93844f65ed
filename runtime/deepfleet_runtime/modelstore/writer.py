"""Writing an encrypted release from a plain model directory (used by `deepfleet model encrypt`).

The release appears whole or not at all: it is written to a hidden sibling directory, every file
fsynced, and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from ..atomicfile import fsync_dir, write_atomic
from .chunks import DEFAULT_CHUNK_SIZE, encrypt_stream
from .errors import ModelStoreError
from .keys import KEY_SIZE, key_check, signing_key_id, wrap_data_key
from .manifest import FileEntry, Manifest, content_release_id, encrypted_path, sign_manifest
from .release import KEY_FILE, MANIFEST_FILE, SIGNATURE_FILE


def model_files(source: Path) -> list[str]:
    """The files of a model directory, as sorted relative paths (hidden files and directories skipped)."""
    source = Path(source)
    paths = []
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            paths.append(relative.as_posix())
    return sorted(paths)


def write_release(source: Path, out_dir: Path, name: str, kek: bytes,
                  signing_key: ed25519.Ed25519PrivateKey, quantization: str,
                  chunk_size: int = DEFAULT_CHUNK_SIZE,
                  progress: Callable[[int], None] | None = None, sequence: int = 0) -> Manifest:
    """Encrypt every file of `source` under a fresh data key into the release directory `out_dir`,
    numbered `sequence` (the model's release counter, signed with the rest)."""
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists():
        raise ModelStoreError(f"{out_dir} already exists; choose another --out or remove it")
    if len(kek) != KEY_SIZE:
        raise ValueError("a key-encryption key has 32 bytes")
    paths = model_files(source)
    if not paths:
        raise ModelStoreError(f"{source} holds no files to encrypt")
    data_key = os.urandom(KEY_SIZE)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        entries = []
        for path in paths:
            target = staging / encrypted_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source / path, "rb") as plain, open(target, "wb") as sealed:
                digests = encrypt_stream(plain, sealed, data_key, path, chunk_size, progress)
                sealed.flush()
                os.fsync(sealed.fileno())
            entries.append(FileEntry(path, digests.size, digests.sha256, digests.encrypted_size,
                                     digests.encrypted_sha256))
        release = content_release_id(name, quantization, [(e.path, e.size, e.sha256) for e in entries])
        manifest = Manifest(name, release, quantization, chunk_size, key_check(data_key),
                            signing_key_id(signing_key.public_key()), tuple(entries), sequence)
        manifest_bytes = manifest.to_bytes()
        write_atomic(staging / MANIFEST_FILE, manifest_bytes)
        write_atomic(staging / SIGNATURE_FILE, sign_manifest(manifest_bytes, signing_key))
        write_atomic(staging / KEY_FILE, wrap_data_key(kek, data_key, manifest.release_name))
        staging.chmod(0o755)
        for directory in [*(p for p in staging.rglob("*") if p.is_dir()), staging]:
            fsync_dir(directory)
        os.rename(staging, out_dir)
        fsync_dir(out_dir.parent)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_key_file(release_dir: Path, key_json: bytes) -> None:
    """Swap a release's key.json for a re-wrapped one, atomically (the weights stay as they are)."""
    write_atomic(Path(release_dir) / KEY_FILE, key_json)
