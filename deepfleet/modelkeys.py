"""The fleet's model keys on the control machine (`deepfleet model keys ...`).

A model keys directory (0700; `model_keys_dir`, default .deepfleet/model-keys):
    model-signing.key    Ed25519 private key, PEM, 0600: signs release manifests; stays here
                         (encrypted under DEEPFLEET_KEY_PASSPHRASE when set, deepfleet/keyfiles.py;
                         absent from a verify-only copy, `deepfleet model keys export-verify`)
    model-verify.pub     its public key, PEM: hosts verify manifests with it
    model-kek-<id>.key   key-encryption keys, 32 random bytes in base64, 0600; hosts get them all
    keyring.json         which KEK is current, and when each was created (ids only, no secrets)
    sequences.json       each model's last release number ({name: n}; back it up with the keys)

The file names of the verify key and the KEKs are the ones hosts use in /etc/deepfleet/keys.
A verify-only directory (no signing key) is what a site that only deploys needs: it verifies and
pushes releases signed elsewhere, and cannot sign new ones.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from deepfleet_runtime.modelstore.keys import (
    KEY_SIZE,
    VERIFY_KEY_FILE,
    KeyDirectory,
    encode_kek,
    kek_file_name,
    kek_id,
    signing_key_id,
)

from .atomicfile import write_atomic
from .filelock import exclusive_lock
from .keyfiles import load_private_key, private_key_pem

SIGNING_KEY_FILE = "model-signing.key"
KEYRING_FILE = "keyring.json"
SEQUENCES_FILE = "sequences.json"


class ModelKeysError(RuntimeError):
    """The model keys directory is missing or inconsistent; the message says how to fix it."""


@dataclass(frozen=True)
class ModelKeys:
    """An existing model keys directory."""

    path: Path

    @property
    def verify_key_path(self) -> Path:
        return self.path / VERIFY_KEY_FILE

    @property
    def keys(self) -> KeyDirectory:
        """The directory as the model store reads it (KEKs by id, verify key)."""
        return KeyDirectory(self.path)

    def keyring(self) -> dict:
        return json.loads((self.path / KEYRING_FILE).read_text())

    def current_kek_id(self) -> str:
        return self.keyring()["current_kek"]

    def current_kek(self) -> bytes:
        return self.keys.kek(self.current_kek_id())

    def kek_files(self) -> dict[str, Path]:
        """{KEK id: file} for every KEK of the keyring (what hosts get)."""
        return {key_id: self.path / kek_file_name(key_id) for key_id in self.keyring()["keks"]}

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        if not (self.path / SIGNING_KEY_FILE).is_file():
            raise ModelKeysError(f"{self.path} is a verify-only keys directory (no {SIGNING_KEY_FILE}): it "
                                 "verifies and pushes releases but cannot sign new ones. Encrypt the model "
                                 "where the signing key is kept (`deepfleet model encrypt`) and bring the release")
        key = load_private_key(self.path / SIGNING_KEY_FILE, ModelKeysError)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ModelKeysError(f"{self.path / SIGNING_KEY_FILE} is not an Ed25519 private key")
        return key

    def next_sequence(self, name: str) -> int:
        """Take the next release number of model `name` (one above the last one signed here)."""
        path = self.path / SEQUENCES_FILE
        with exclusive_lock(self.path / ".sequences.lock"):
            sequences = json.loads(path.read_text()) if path.exists() else {}
            sequences[name] = sequences.get(name, 0) + 1
            write_atomic(path, json.dumps(sequences, indent=1, sort_keys=True) + "\n", mode=0o644)
        return sequences[name]

    def signing_key_id(self) -> str:
        return signing_key_id(self.keys.verify_key())


def load_model_keys(path: Path) -> ModelKeys:
    """The model keys in `path` (the signing key is optional: without it, a verify-only directory);
    ModelKeysError with the fix when they are not there."""
    path = Path(path)
    expected = [VERIFY_KEY_FILE, KEYRING_FILE]
    missing = [name for name in expected if not (path / name).is_file()]
    if len(missing) == len(expected):
        raise ModelKeysError(f"no model keys in {path}; create them with `deepfleet model keys create "
                             f"--keys-dir {path}` (and keep a backup: releases cannot be opened without them)")
    if missing:
        raise ModelKeysError(f"{path} lacks {', '.join(missing)}; restore it from backup")
    return ModelKeys(path)


def create_model_keys(path: Path) -> tuple[ModelKeys, bool]:
    """Create the signing key and a first KEK in `path` unless they exist; returns (keys, created)."""
    path = Path(path)
    if (path / KEYRING_FILE).exists() or (path / SIGNING_KEY_FILE).exists():
        return load_model_keys(path), False
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    signing = ed25519.Ed25519PrivateKey.generate()
    write_atomic(path / SIGNING_KEY_FILE, private_key_pem(signing), mode=0o600)
    write_atomic(path / VERIFY_KEY_FILE, signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), mode=0o644)
    _add_kek(path, {"keks": {}})
    return ModelKeys(path), True


def export_verify_only(keys: ModelKeys, dest: Path) -> ModelKeys:
    """Copy `keys` without the signing key into the new directory `dest` (0700): what a site that
    deploys, but never signs, receives."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ModelKeysError(f"{dest} is not empty; export into a new directory")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(dest, 0o700)
    for source in [keys.verify_key_path, keys.path / KEYRING_FILE, *keys.kek_files().values()]:
        shutil.copy2(source, dest / source.name)  # keeps each file's mode (KEKs 0600)
    return ModelKeys(dest)


def rotate_kek(keys: ModelKeys) -> str:
    """Create a new KEK and make it current (older ones stay, so existing releases still open)."""
    return _add_kek(keys.path, keys.keyring())


def _add_kek(path: Path, keyring: dict) -> str:
    kek = os.urandom(KEY_SIZE)
    key_id = kek_id(kek)
    write_atomic(path / kek_file_name(key_id), encode_kek(kek), mode=0o600)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    keyring = {"current_kek": key_id, "keks": {**keyring["keks"], key_id: {"created": created}}}
    write_atomic(path / KEYRING_FILE, json.dumps(keyring, indent=1, sort_keys=True) + "\n", mode=0o644)
    return key_id
