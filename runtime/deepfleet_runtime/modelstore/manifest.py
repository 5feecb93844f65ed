"""manifest.json: what a release holds, signed with Ed25519 by the control side.

The signature (manifest.sig, base64) covers the exact bytes of manifest.json. Release ids are
content-addressed: the same model files, name and quantisation give the same id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from .errors import ModelStoreError
from .keys import signing_key_id

FORMAT = "deepfleet-model/1"
CIPHER = "AES-256-GCM-chunked"
ENCRYPTED_DIR = "encrypted"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative path in the model directory, "/"-separated
    size: int
    sha256: str
    encrypted_size: int
    encrypted_sha256: str

    @property
    def encrypted_path(self) -> str:
        return encrypted_path(self.path)


@dataclass(frozen=True)
class Manifest:
    name: str
    release: str
    quantization: str
    chunk_size: int
    data_key_check: str
    signing_key_id: str
    files: tuple[FileEntry, ...]
    # The model's release counter, set by the signer (1, 2, ...; 0 in releases made before it): a
    # host refuses a release numbered below the highest it has served, unless rolled back to it.
    sequence: int = 0

    @property
    def release_name(self) -> str:
        """`name@release`, the release directory's name on hosts."""
        return f"{self.name}@{self.release}"

    @property
    def encrypted_bytes(self) -> int:
        return sum(entry.encrypted_size for entry in self.files)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_bytes(self) -> bytes:
        document = {"format": FORMAT, "cipher": CIPHER, **asdict(self)}
        document["files"] = [asdict(entry) for entry in self.files]
        return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "Manifest":
        """Parse and validate manifest.json; ModelStoreError naming `where` on anything unexpected."""
        try:
            document = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelStoreError(f"{where} is not valid JSON ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            found = document.get("format") if isinstance(document, dict) else None
            raise ModelStoreError(f"{where} is not a {FORMAT} manifest (format: {found!r}); "
                                  "upgrade deepfleet-runtime if the release is newer")
        if document.get("cipher") != CIPHER:
            raise ModelStoreError(f"{where}: cipher {document.get('cipher')!r} is not {CIPHER!r}")
        document = {key: value for key, value in document.items() if key not in ("format", "cipher")}
        try:
            files = tuple(FileEntry(**entry) for entry in document["files"])
            manifest = cls(**{**document, "files": files})
        except (KeyError, TypeError) as exc:
            raise ModelStoreError(f"{where} lacks a field or has an unknown one ({exc})") from None
        manifest._validate(where)
        return manifest

    def _validate(self, where: str) -> None:
        if not (_NAME.match(self.name) and _NAME.match(self.release)):
            raise ModelStoreError(f"{where}: model name {self.name!r} or release {self.release!r} is not a plain name")
        if not self.files:
            raise ModelStoreError(f"{where} lists no files")
        if not isinstance(self.sequence, int) or isinstance(self.sequence, bool) or self.sequence < 0:
            raise ModelStoreError(f"{where}: sequence {self.sequence!r} is not a release number")
        for entry in self.files:
            check_relative_path(entry.path if isinstance(entry.path, str) else "", where)
            if not (_HEX64.match(entry.sha256) and _HEX64.match(entry.encrypted_sha256)
                    and isinstance(entry.size, int) and isinstance(entry.encrypted_size, int)):
                raise ModelStoreError(f"{where}: entry {entry.path!r} has a malformed size or hash")
        if len({entry.path for entry in self.files}) != len(self.files):
            raise ModelStoreError(f"{where} lists a file twice")


def encrypted_path(path: str) -> str:
    """Where the encrypted form of model file `path` lives inside a release directory."""
    return f"{ENCRYPTED_DIR}/{path}"


def check_relative_path(path: str, where: str) -> None:
    """Refuse absolute paths, `..` and empty parts: a manifest never names a file outside its release."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in path \
            or posixpath.normpath(path) != path:
        raise ModelStoreError(f"{where}: file path {path!r} is not a plain relative path")


def content_release_id(name: str, quantization: str, files: list[tuple[str, int, str]]) -> str:
    """12 hex digits naming this content: model name, quantisation, and each file's path, size, SHA-256."""
    canonical = json.dumps({"name": name, "quantization": quantization, "files": sorted(files)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def sign_manifest(manifest_bytes: bytes, signing_key: ed25519.Ed25519PrivateKey) -> bytes:
    """The text of manifest.sig."""
    return base64.b64encode(signing_key.sign(manifest_bytes)) + b"\n"


def verify_manifest(manifest_bytes: bytes, signature_text: bytes, verify_key: ed25519.Ed25519PublicKey,
                    where: str) -> Manifest:
    """The manifest, once its signature checks out against `verify_key`."""
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
        verify_key.verify(signature, manifest_bytes)
    except (binascii.Error, ValueError, InvalidSignature):
        manifest = _try_parse(manifest_bytes, where)
        signer = f" (it names signing key {manifest.signing_key_id})" if manifest else ""
        raise ModelStoreError(f"{where}: the signature does not verify with the fleet's verify key "
                              f"{signing_key_id(verify_key)}{signer}; the manifest was altered or signed "
                              "by another key: do not use this release") from None
    return Manifest.from_bytes(manifest_bytes, where)


def _try_parse(manifest_bytes: bytes, where: str) -> Manifest | None:
    try:
        return Manifest.from_bytes(manifest_bytes, where)
    except ModelStoreError:
        return None
