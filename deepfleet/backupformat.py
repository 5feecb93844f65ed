"""The backup container: one file, encrypted in authenticated chunks and signed.

Layout (all lengths big-endian u32):
    MAGIC  header length  header (JSON)  header MAC (HMAC-SHA256, 32 bytes)
    chunk: length + AES-256-GCM ciphertext, ...; then a length of 0 (end of chunks)
    signature (Ed25519, 64 bytes)  END

The header names how the content key is unlocked (`lock`: scrypt over a passphrase, or X25519
to a recipient's public key, age-style), a `key_check` (so a wrong passphrase is told apart from
a damaged file) and the signer's public key; the MAC, keyed from the content key, tells a
damaged header apart from a damaged chunk. Chunk i is sealed with nonce = prefix (7 bytes) || i
(4 bytes) || last (1 byte) and the header's SHA-256 as associated data: chunks cannot be
reordered, dropped at the end, or moved to another archive. The signature covers the header's
and the chunk section's SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"DFBKUP1\n"
END = b"DFBKEND\n"
CHUNK_SIZE = 64 * 1024
SCRYPT = {"n": 2 ** 17, "r": 8, "p": 1}  # 128 MiB, about a second
_SCRYPT_MAX = {"n": 2 ** 20, "r": 16, "p": 4}
_SIGNED = b"deepfleet-backup-1\0"
_U32 = struct.Struct(">I")
_TAG = 16


class BackupError(RuntimeError):
    """The archive cannot be made, read or trusted; the message says why and what to do."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def key_id(public_raw: bytes) -> str:
    """A short name for a public key (never for a secret)."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def raw_public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def passphrase_lock(passphrase: str) -> tuple[dict, bytes]:
    """(header lock, content key) for a new archive under `passphrase`."""
    if not passphrase:
        raise BackupError("the backup passphrase is empty; set DEEPFLEET_BACKUP_PASSPHRASE to a long passphrase")
    lock = {"kind": "passphrase", "kdf": "scrypt", "salt": b64(os.urandom(16)), **SCRYPT}
    return lock, _scrypt(lock, passphrase)


def recipient_lock(recipient: x25519.X25519PublicKey) -> tuple[dict, bytes]:
    """(header lock, content key) for a new archive that only `recipient`'s private key opens."""
    ephemeral = x25519.X25519PrivateKey.generate()
    lock = {"kind": "x25519", "ephemeral": b64(raw_public(ephemeral.public_key())),
            "recipient": b64(raw_public(recipient))}
    return lock, _x25519(lock, ephemeral.exchange(recipient))


def _scrypt(lock: dict, passphrase: str) -> bytes:
    if any(not isinstance(lock.get(k), int) or not 0 < lock[k] <= top for k, top in _SCRYPT_MAX.items()) \
            or lock["n"] & (lock["n"] - 1):
        raise BackupError("the archive's header asks for scrypt parameters out of range: it was altered")
    kdf = Scrypt(salt=unb64(lock["salt"]), length=96, n=lock["n"], r=lock["r"], p=lock["p"])
    return kdf.derive(passphrase.encode())


def _x25519(lock: dict, shared: bytes) -> bytes:
    salt = unb64(lock["ephemeral"]) + unb64(lock["recipient"])
    return HKDF(hashes.SHA256(), 96, salt=salt, info=b"deepfleet-backup-1 x25519").derive(shared)


class Writer:
    """Seals what is written to it into `out` (a binary file); close() signs and ends the archive."""

    def __init__(self, out, lock: dict, keys: bytes, signer: ed25519.Ed25519PrivateKey, signer_kind: str,
                 created: str):
        self._out, self._signer = out, signer
        public = raw_public(signer.public_key())
        header = {"format": 1, "created": created, "chunk_size": CHUNK_SIZE, "nonce_prefix": b64(os.urandom(7)),
                  "lock": lock, "key_check": b64(keys[64:]),
                  "signer": {"kind": signer_kind, "public_key": b64(public), "id": key_id(public)}}
        header_bytes = json.dumps(header, sort_keys=True).encode()
        head = MAGIC + _U32.pack(len(header_bytes)) + header_bytes
        out.write(head + hmac.digest(keys[32:64], head, "sha256"))
        self._aad = hashlib.sha256(head).digest()
        self._aead, self._prefix = AESGCM(keys[:32]), unb64(header["nonce_prefix"])
        self._body = hashlib.sha256()
        self._buffer, self._index = bytearray(), 0

    def write(self, data) -> int:
        self._buffer += data
        while len(self._buffer) > CHUNK_SIZE:  # keep one back: the last chunk is sealed as last
            self._seal(bytes(self._buffer[:CHUNK_SIZE]), last=False)
            del self._buffer[:CHUNK_SIZE]
        return len(data)

    def close(self) -> None:
        self._seal(bytes(self._buffer), last=True)
        self._emit(_U32.pack(0))
        self._out.write(self._signer.sign(_SIGNED + self._aad + self._body.digest()) + END)

    def _seal(self, plain: bytes, last: bool) -> None:
        nonce = self._prefix + _U32.pack(self._index) + bytes([last])
        sealed = self._aead.encrypt(nonce, plain, self._aad)
        self._emit(_U32.pack(len(sealed)) + sealed)
        self._index += 1

    def _emit(self, data: bytes) -> None:
        self._body.update(data)
        self._out.write(data)


@dataclass
class Container:
    """An archive's structure, read and checked for completeness (nothing decrypted yet)."""

    path: Path
    header: dict
    header_end: int
    aad: bytes
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (offset of ciphertext, length)
    signature: bytes = b""
    signature_offset: int = 0
    header_mac: bytes = b""

    @property
    def signer_public(self) -> bytes:
        return unb64(self.header["signer"]["public_key"])

    def signature_valid(self, body_digest: bytes) -> bool:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.signer_public).verify(
                self.signature, _SIGNED + self.aad + body_digest)
            return True
        except (InvalidSignature, ValueError):
            return False


def read_container(path: Path) -> tuple[Container, bytes]:
    """The structure of the archive at `path` and its chunk section's SHA-256; BackupError naming
    the offset where it is truncated or malformed."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise BackupError(f"{path} is not a deepfleet backup (it does not start with {MAGIC!r})")
        header_length = _read_u32(handle, path, size)
        if header_length > 64 * 1024:
            raise BackupError(f"{path}: the header length at byte {len(MAGIC)} was altered ({header_length} bytes)")
        header_bytes = _read_exact(handle, header_length, path, size)
        try:
            header = json.loads(header_bytes)
            limit = int(header["chunk_size"]) + _TAG
            header["lock"]["kind"], header["signer"]["public_key"], unb64(header["nonce_prefix"])
        except (ValueError, KeyError, TypeError):
            raise BackupError(f"{path}: the header (bytes {len(MAGIC) + 4}-{handle.tell()}) was altered: it is not "
                              "the JSON a backup carries; use another copy of the backup") from None
        head_end = handle.tell()
        handle.seek(0)
        container = Container(path, header, head_end + 32, hashlib.sha256(handle.read(head_end)).digest())
        container.header_mac = _read_exact(handle, 32, path, size)
        body = hashlib.sha256()
        while True:
            offset = handle.tell()
            length = _read_u32(handle, path, size)
            body.update(_U32.pack(length))
            if length == 0:
                break
            if length > limit or length < _TAG:
                raise BackupError(f"{path}: the chunk length at byte {offset} was altered ({length} bytes)")
            body.update(_read_exact(handle, length, path, size))
            container.chunks.append((offset + 4, length))
        if not container.chunks:
            raise BackupError(f"{path}: the archive has no chunks; it was altered")
        container.signature_offset = handle.tell()
        container.signature = _read_exact(handle, 64, path, size)
        if _read_exact(handle, len(END), path, size) != END or handle.read(1):
            raise BackupError(f"{path}: the archive does not end where it should (byte {handle.tell()}): it was "
                              "altered or has bytes appended; use another copy of the backup")
    return container, body.digest()


def unlock(container: Container, passphrase: str | None = None,
           identity: x25519.X25519PrivateKey | None = None) -> bytes:
    """The archive's keys; BackupError when the passphrase or identity is not the right one, or
    the header was altered."""
    lock = container.header["lock"]
    if lock["kind"] == "passphrase":
        if not passphrase:
            raise BackupError("this backup is sealed with a passphrase: set DEEPFLEET_BACKUP_PASSPHRASE "
                              "(or run on a terminal to be asked)")
        keys = _scrypt(lock, passphrase)
        what = "wrong passphrase: DEEPFLEET_BACKUP_PASSPHRASE does not open this backup"
    elif lock["kind"] == "x25519":
        if identity is None:
            raise BackupError(f"this backup is sealed to the recipient key {key_id(unb64(lock['recipient']))}: "
                              "pass --identity FILE, its private key (`deepfleet backup keygen`)")
        if raw_public(identity.public_key()) != unb64(lock["recipient"]):
            raise BackupError(f"wrong identity: this backup is sealed to the recipient key "
                              f"{key_id(unb64(lock['recipient']))}, not to {key_id(raw_public(identity.public_key()))}")
        ephemeral = x25519.X25519PublicKey.from_public_bytes(unb64(lock["ephemeral"]))
        keys = _x25519(lock, identity.exchange(ephemeral))
        what = "the identity does not open this backup (its header was altered)"
    else:
        raise BackupError(f"unknown lock {lock['kind']!r} in the header: it was altered, or made by a newer deepfleet")
    if not hmac.compare_digest(keys[64:], unb64(container.header["key_check"])):
        raise BackupError(what)
    with open(container.path, "rb") as handle:
        head = handle.read(container.header_end - 32)
    if not hmac.compare_digest(hmac.digest(keys[32:64], head, "sha256"), container.header_mac):
        raise BackupError(f"{container.path}: the header (bytes 0-{container.header_end - 1}) was altered; "
                          "use another copy of the backup")
    return keys


def plaintext(container: Container, key: bytes):
    """The archive's content, chunk by chunk; BackupError naming the chunk and its bytes when one
    does not authenticate."""
    aead, prefix = AESGCM(key[:32]), unb64(container.header["nonce_prefix"])
    with open(container.path, "rb") as handle:
        for index, (offset, length) in enumerate(container.chunks):
            handle.seek(offset)
            last = index == len(container.chunks) - 1
            try:
                yield aead.decrypt(prefix + _U32.pack(index) + bytes([last]), handle.read(length), container.aad)
            except InvalidTag:
                raise BackupError(f"{container.path}: chunk {index} (bytes {offset}-{offset + length - 1}) was altered "
                                  "or the archive was cut short and re-ended: it does not authenticate; use "
                                  "another copy of the backup") from None


def _read_u32(handle, path: Path, size: int) -> int:
    return _U32.unpack(_read_exact(handle, 4, path, size))[0]


def _read_exact(handle, count: int, path: Path, size: int) -> bytes:
    at = handle.tell()
    data = handle.read(count)
    if len(data) < count:
        raise BackupError(f"{path} is truncated: it ends at byte {size}, inside a part that needs bytes "
                          f"{at}-{at + count - 1}; copy the whole file again from where it was made")
    return data
