"""One file, encrypted as a stream of AES-256-GCM chunks (format in docs/model-format.md).

    header  = MAGIC (8) | version (1) | reserved (3, zero) | chunk_size (4, big-endian) | salt (32)
    chunk i = AES-256-GCM(file_key, nonce = i as 12 bytes big-endian,
                          aad = header | i (8, big-endian) | final (1)) -> ciphertext | tag (16)

Every chunk but the last holds exactly `chunk_size` plaintext bytes; the last holds 0..chunk_size
and is the only one sealed with final = 1, so a truncated, extended or reordered stream fails to
authenticate. The file key is HKDF-SHA256(data key, salt, info = INFO_FILE_KEY | path), so each
file has its own key (random salt: nonces never repeat under one key) and a chunk moved to another
file, or a file renamed within a release, does not decrypt. Memory use is one chunk.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ModelStoreError

MAGIC = b"DFMODEL\0"
VERSION = 1
HEADER = struct.Struct(">8sB3sI32s")
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 64 << 20  # a reader never allocates more than this per chunk
INFO_FILE_KEY = b"deepfleet-model/1 file-key\0"


@dataclass(frozen=True)
class FileDigests:
    """What encrypting a file produced: sizes and SHA-256 of the plaintext and of the ciphertext."""

    size: int
    sha256: str
    encrypted_size: int
    encrypted_sha256: str


def encrypted_size(size: int, chunk_size: int) -> int:
    """The size of the encrypted form of a `size`-byte file."""
    chunks = max(1, -(-size // chunk_size))
    return HEADER.size + size + chunks * TAG_SIZE


def encrypt_stream(source: BinaryIO, target: BinaryIO, data_key: bytes, path: str,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, progress=None) -> FileDigests:
    """Encrypt `source` into `target` chunk by chunk; `path` is the file's name in the release."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")
    header = HEADER.pack(MAGIC, VERSION, bytes(3), chunk_size, os.urandom(32))
    aead = AESGCM(_file_key(data_key, header, path))
    plain_hash, cipher_hash = hashlib.sha256(), hashlib.sha256()
    target.write(header)
    cipher_hash.update(header)
    size, written = 0, len(header)
    block = source.read(chunk_size)
    index = 0
    while True:
        following = source.read(chunk_size) if len(block) == chunk_size else b""
        final = not following
        sealed = aead.encrypt(index.to_bytes(12, "big"), block, _aad(header, index, final))
        target.write(sealed)
        plain_hash.update(block)
        cipher_hash.update(sealed)
        size += len(block)
        written += len(sealed)
        if progress:
            progress(len(block))
        if final:
            break
        block, index = following, index + 1
    return FileDigests(size, plain_hash.hexdigest(), written, cipher_hash.hexdigest())


def decrypt_stream(source: BinaryIO, data_key: bytes, path: str,
                   into: memoryview | None = None) -> Iterator[bytes | memoryview]:
    """Yield the plaintext of an encrypted file chunk by chunk, each authenticated before it is
    yielded; raise ModelStoreError naming `path` on a bad header, a failed chunk or truncation.

    With `into` (a writable buffer of the plaintext's size) chunks are decrypted in place there
    and yielded as slices of it, so a whole file is read into memory without further copies.
    """
    header = source.read(HEADER.size)
    chunk_size = _check_header(header, path)
    aead = AESGCM(_file_key(data_key, header, path))
    sealed_size = chunk_size + TAG_SIZE
    block = source.read(sealed_size)
    index = position = 0
    while True:
        if len(block) < TAG_SIZE:
            raise ModelStoreError(f"{path}: truncated before chunk {index} (no final chunk); "
                                  "the file is incomplete: push the release again")
        following = source.read(sealed_size) if len(block) == sealed_size else b""
        final = not following
        nonce, aad = index.to_bytes(12, "big"), _aad(header, index, final)
        length = len(block) - TAG_SIZE
        if into is not None and position + length > len(into):
            raise ModelStoreError(f"{path}: longer than the manifest says ({len(into)} bytes); push the release again")
        try:
            if into is None:
                plain = aead.decrypt(nonce, block, aad)
            else:
                plain = into[position:position + length]
                aead.decrypt_into(nonce, block, aad, plain)
        except InvalidTag:
            raise ModelStoreError(f"{path}: chunk {index} failed authentication (the file was altered, "
                                  "truncated or reordered, or belongs to another file or release); "
                                  "do not use this copy: push the release again") from None
        yield plain
        if final:
            return
        block, index, position = following, index + 1, position + length


def _check_header(header: bytes, path: str) -> int:
    if len(header) < HEADER.size or header[:8] != MAGIC:
        raise ModelStoreError(f"{path}: not a deepfleet encrypted model file (bad magic); "
                              "it was replaced or damaged: push the release again")
    _, version, reserved, chunk_size, _ = HEADER.unpack(header)
    if version != VERSION or reserved != bytes(3):
        raise ModelStoreError(f"{path}: format version {version} is not supported by this runtime "
                              f"(it reads version {VERSION}); upgrade deepfleet-runtime")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ModelStoreError(f"{path}: chunk size {chunk_size} is out of range; the file is damaged")
    return chunk_size


def _file_key(data_key: bytes, header: bytes, path: str) -> bytes:
    salt = header[-32:]
    return HKDF(hashes.SHA256(), 32, salt, INFO_FILE_KEY + path.encode()).derive(data_key)


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")
