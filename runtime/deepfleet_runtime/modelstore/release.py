"""An encrypted release directory, read on hosts: verify it, decrypt its files into memory.

    <name>@<release>/
        manifest.json   files, sizes, plaintext and ciphertext SHA-256 (signed)
        manifest.sig    Ed25519 signature of manifest.json, base64
        key.json        the release's data key, wrapped by a fleet KEK
        encrypted/<path>  each model file, encrypted in chunks (chunks.py)

Opening a release checks the signature and unwraps the data key; every read then checks the
encrypted file's size, each chunk's tag, and the plaintext's size and SHA-256 against the signed
manifest, and raises ModelStoreError naming the file before returning anything from a file that
fails. (The tags already authenticate every ciphertext byte, so reads do not hash the ciphertext
again; its SHA-256 in the manifest serves checks without keys, such as the push's.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .chunks import decrypt_stream
from .errors import ModelStoreError
from .keys import KeyDirectory, unwrap_data_key, wrap_data_key
from .manifest import Manifest, verify_manifest

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
KEY_FILE = "key.json"
READ_BLOCK = 1 << 20


def is_release(directory: Path) -> bool:
    """True when `directory` holds an encrypted release (rather than a plain model directory)."""
    return (Path(directory) / MANIFEST_FILE).is_file()


def read_signed_manifest(directory: Path, keys: KeyDirectory) -> Manifest:
    """The release's manifest, after its signature verified with the host's verify key."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    return verify_manifest(_read(manifest_path), _read(directory / SIGNATURE_FILE), keys.verify_key(),
                           str(manifest_path))


@dataclass
class Release:
    """An opened release: signature verified, data key unwrapped and checked."""

    directory: Path
    manifest: Manifest
    _data_key: bytes

    @classmethod
    def open(cls, directory: Path, keys: KeyDirectory, expected_name: str | None = None) -> "Release":
        directory = Path(directory).resolve()
        manifest = read_signed_manifest(directory, keys)
        if expected_name is not None and manifest.name != expected_name:
            raise ModelStoreError(f"{directory / MANIFEST_FILE} is model {manifest.name!r}, not {expected_name!r}")
        data_key = unwrap_data_key(_read(directory / KEY_FILE), keys, manifest.release_name,
                                   manifest.data_key_check, str(directory / KEY_FILE))
        return cls(directory, manifest, data_key)

    def key_file_wrapped_with(self, kek: bytes) -> bytes:
        """A new key.json for this release, its data key wrapped by `kek` (re-wrapping, no re-encryption)."""
        return wrap_data_key(kek, self._data_key, self.manifest.release_name)

    def iter_plaintext(self, path: str, into: memoryview | None = None) -> Iterator[bytes | memoryview]:
        """The plaintext of one file, chunk by chunk, each chunk authenticated before it is yielded
        (decrypted in place into `into` when given, see chunks.decrypt_stream). The whole-file hash
        checks run after the last chunk: act on the data only once the iterator has ended without
        error (read_file and verify do)."""
        entry = self.manifest.file(path)
        where = f"{self.manifest.release_name}: {path}"
        source = self.directory / entry.encrypted_path
        try:
            handle = open(source, "rb")
        except FileNotFoundError:
            raise ModelStoreError(f"{where}: {source} is missing; push the release again", path) from None
        with handle:
            actual = handle.seek(0, 2)
            if actual != entry.encrypted_size:
                raise ModelStoreError(f"{where}: {source} has {actual} bytes, the manifest says "
                                      f"{entry.encrypted_size} (truncated or replaced); push the release again", path)
            handle.seek(0)
            plain_hash, size = hashlib.sha256(), 0
            try:
                for block in decrypt_stream(handle, self._data_key, path, into):
                    plain_hash.update(block)
                    size += len(block)
                    yield block
            except ModelStoreError as exc:
                raise ModelStoreError(f"{self.manifest.release_name}: {exc}", path) from None
        if size != entry.size or plain_hash.hexdigest() != entry.sha256:
            raise ModelStoreError(f"{where}: the decrypted content differs from the signed manifest "
                                  "(size or SHA-256); push the release again", path)

    def read_file(self, path: str) -> bytearray:
        """One file's plaintext, decrypted straight into one buffer of its size, and verified."""
        buffer = bytearray(self.manifest.file(path).size)
        for _ in self.iter_plaintext(path, memoryview(buffer)):
            pass
        return buffer

    def verify(self, progress: Callable[[int], None] | None = None) -> None:
        """Decrypt and check every file, in constant memory; ModelStoreError names the first bad file."""
        for entry in self.manifest.files:
            for block in self.iter_plaintext(entry.path):
                if progress:
                    progress(len(block))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelStoreError(f"{path} is missing; this is not a complete release") from None
    except PermissionError:
        raise ModelStoreError(f"cannot read {path}: permission denied") from None
