"""The model format: round trips, and every kind of damage refused with an error naming the file."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from deepfleet_runtime.modelstore import KeyDirectory, ModelStoreError, Release
from deepfleet_runtime.modelstore.chunks import HEADER, TAG_SIZE, decrypt_stream, encrypt_stream, encrypted_size
from deepfleet_runtime.modelstore.keys import VERIFY_KEY_FILE, encode_kek
from deepfleet_runtime.modelstore.manifest import Manifest
from deepfleet_runtime.modelstore.release import KEY_FILE, MANIFEST_FILE
from tests.runtime.conftest import CHUNK, WEIGHTS



@pytest.fixture
def release_copy(store, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(store.release, copy)
    return copy


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_file_round_trips_byte_for_byte(store, tiny_model_dir):
    release = Release.open(store.release, store.keys)
    assert release.manifest.name == "tiny" and len(release.manifest.release) == 12
    for entry in release.manifest.files:
        assert release.read_file(entry.path) == (tiny_model_dir / entry.path).read_bytes()
        encrypted = store.release / entry.encrypted_path
        assert encrypted.stat().st_size == entry.encrypted_size == encrypted_size(entry.size, CHUNK)
    weights = (tiny_model_dir / WEIGHTS).read_bytes()
    assert weights[4096:4160] not in (store.release / "encrypted" / WEIGHTS).read_bytes()


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096])
def test_chunk_stream_round_trips_at_chunk_boundaries(size):
    key, plain = os.urandom(32), os.urandom(size)
    sealed = io.BytesIO()
    digests = encrypt_stream(io.BytesIO(plain), sealed, key, "f.bin", chunk_size=4096)
    assert (digests.size, digests.encrypted_size) == (size, encrypted_size(size, 4096)) == (size, len(sealed.getvalue()))
    assert b"".join(decrypt_stream(io.BytesIO(sealed.getvalue()), key, "f.bin")) == plain


def _sealed(chunks: int = 4, chunk_size: int = 4096) -> tuple[bytes, bytes]:
    key = os.urandom(32)
    sealed = io.BytesIO()
    encrypt_stream(io.BytesIO(os.urandom(chunks * chunk_size - 100)), sealed, key, "f.bin", chunk_size)
    return key, sealed.getvalue()


def _decrypt(key: bytes, data: bytes, path: str = "f.bin") -> bytes:
    return b"".join(decrypt_stream(io.BytesIO(data), key, path))


def test_a_stream_cut_at_a_chunk_boundary_is_refused():
    key, data = _sealed()
    whole = 4096 + TAG_SIZE
    with pytest.raises(ModelStoreError, match=r"f.bin: chunk 2 failed authentication \(.*truncated"):
        _decrypt(key, data[: HEADER.size + 3 * whole])
    with pytest.raises(ModelStoreError, match="f.bin: truncated before chunk 0"):
        _decrypt(key, data[: HEADER.size])


def test_reordered_chunks_are_refused():
    key, data = _sealed()
    whole = 4096 + TAG_SIZE
    first, second = (data[HEADER.size + i * whole: HEADER.size + (i + 1) * whole] for i in (0, 1))
    swapped = data[: HEADER.size] + second + first + data[HEADER.size + 2 * whole:]
    with pytest.raises(ModelStoreError, match="f.bin: chunk 0 failed authentication"):
        _decrypt(key, swapped)


def test_a_file_decrypted_under_another_name_is_refused():
    key, data = _sealed()
    with pytest.raises(ModelStoreError, match="g.bin: chunk 0 failed authentication"):
        _decrypt(key, data, "g.bin")


def test_a_flipped_byte_names_the_file_and_the_chunk(store, release_copy):
    _flip_byte(release_copy / "encrypted" / WEIGHTS, HEADER.size + 5 * ((CHUNK) + TAG_SIZE) + 7)
    release = Release.open(release_copy, store.keys)
    with pytest.raises(ModelStoreError, match=rf"tiny@\w+: {WEIGHTS}: chunk 5 failed authentication") as error:
        release.read_file(WEIGHTS)
    assert error.value.path == WEIGHTS


def test_a_truncated_file_is_refused_before_decrypting(store, release_copy):
    target = release_copy / "encrypted" / WEIGHTS
    os.truncate(target, target.stat().st_size - 1000)
    with pytest.raises(ModelStoreError, match=rf"{WEIGHTS}: .* bytes, the manifest says .*truncated"):
        Release.open(release_copy, store.keys).read_file(WEIGHTS)


def test_a_file_from_another_release_is_refused(store, release_copy, tiny_model_dir, tmp_path):
    other = tmp_path / "other"
    store.write(tiny_model_dir, other)  # same content and keys, a fresh data key: same sizes, other bytes
    shutil.copyfile(other / "encrypted" / "config.json", release_copy / "encrypted" / "config.json")
    with pytest.raises(ModelStoreError, match="config.json: chunk 0 failed authentication .*another file or release"):
        Release.open(release_copy, store.keys).verify()
    shutil.copyfile(other / KEY_FILE, release_copy / KEY_FILE)
    with pytest.raises(ModelStoreError, match="key.json: the unwrapped data key is not the one the signed manifest commits to"):
        Release.open(release_copy, store.keys)


def test_a_wrong_kek_is_refused(store, tmp_path):
    keys = tmp_path / "keys"
    shutil.copytree(store.root / "keys", keys)
    (kek_file,) = keys.glob("model-kek-*.key")
    kek_file.write_text(encode_kek(os.urandom(32)))  # same name, other key
    with pytest.raises(ModelStoreError, match=r"model-kek-\w+\.key does not hold key"):
        Release.open(store.release, KeyDirectory(keys))
    kek_file.unlink()
    with pytest.raises(ModelStoreError, match="wrapped with key-encryption key .* which is not in"):
        Release.open(store.release, KeyDirectory(keys))


def test_an_altered_or_foreign_signature_is_refused(store, release_copy, tmp_path):
    manifest_path = release_copy / MANIFEST_FILE
    original = manifest_path.read_bytes()
    manifest_path.write_bytes(original.replace(b'"quantization": "none"', b'"quantization": "int8"'))
    with pytest.raises(ModelStoreError, match="manifest.json: the signature does not verify"):
        Release.open(release_copy, store.keys)
    manifest_path.write_bytes(original)
    foreign = tmp_path / "foreign-keys"
    shutil.copytree(store.root / "keys", foreign)
    (foreign / VERIFY_KEY_FILE).write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    manifest = Manifest.from_bytes(original, "m")
    with pytest.raises(ModelStoreError, match=f"it names signing key {manifest.signing_key_id}"):
        Release.open(release_copy, KeyDirectory(foreign))
