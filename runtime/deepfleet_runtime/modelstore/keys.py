"""Keys of the model supply chain, as hosts hold them, and the wrapping of data keys.

A key directory (/etc/deepfleet/keys on hosts, root 0400; a private copy for the runtime) holds:
    model-kek-<id>.key   a fleet key-encryption key: 32 random bytes, base64, one line
    model-kek-<id>.cred  or the same sealed with systemd-creds (hosts in systemd mode: sealedkeys.py)
    model-verify.pub     the Ed25519 public key that release manifests must be signed with (PEM)

Each release has its own random 32-byte data key, stored only wrapped by a KEK in the release's
key.json: AES-256-GCM(kek, random nonce, aad = INFO_WRAP | name "@" release). The signed manifest
carries `data_key_check` = HMAC-SHA256(data key, INFO_KEY_CHECK), so a key.json from another
release, or a wrong key, is refused before any weight is decrypted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import ModelStoreError
from .sealedkeys import sealed_file_name, unseal

KEY_SIZE = 32
VERIFY_KEY_FILE = "model-verify.pub"
KEY_FORMAT = "deepfleet-model-key/1"
INFO_KEK_ID = b"deepfleet-model/1 kek-id\0"
INFO_WRAP = b"deepfleet-model/1 data-key\0"
INFO_KEY_CHECK = b"deepfleet-model/1 key-check"


def kek_id(kek: bytes) -> str:
    """A KEK's public name: 16 hex digits of a domain-separated SHA-256 (reveals nothing of the key)."""
    return hashlib.sha256(INFO_KEK_ID + kek).hexdigest()[:16]


def kek_file_name(key_id: str) -> str:
    return f"model-kek-{key_id}.key"


def encode_kek(kek: bytes) -> str:
    """The text of a KEK file."""
    return base64.b64encode(kek).decode() + "\n"


def decode_kek(text: str, where: str) -> bytes:
    """A KEK from the text of its file; ModelStoreError naming `where` when it is not one."""
    try:
        kek = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        kek = b""
    if len(kek) != KEY_SIZE:
        raise ModelStoreError(f"{where} is not a model key-encryption key (expected {KEY_SIZE} bytes, "
                              "base64); restore it from the control machine's model keys directory")
    return kek


def signing_key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """16 hex digits naming an Ed25519 public key (SHA-256 of its raw bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def key_check(data_key: bytes) -> str:
    """The manifest's commitment to its data key."""
    return hmac.new(data_key, INFO_KEY_CHECK, hashlib.sha256).hexdigest()


class KeyDirectory:
    """A directory of KEKs and the verify key (on a host, or the runtime's private copy)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def kek(self, key_id: str) -> bytes:
        path = self.path / kek_file_name(key_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            sealed = self.path / sealed_file_name(key_id)
            if not sealed.exists():
                raise ModelStoreError(f"the data key is wrapped with key-encryption key {key_id}, which is not "
                                      f"in {self.path}; deploy the fleet's model keys to this host (the model "
                                      "role pushes the key of the release it deploys)") from None
            text = unseal(sealed, key_id)
        except PermissionError:
            raise ModelStoreError(f"cannot read {path}: permission denied (keys are root 0400; the runtime "
                                  "gets a private copy when systemd starts it)") from None
        kek = decode_kek(text, str(path))
        if kek_id(kek) != key_id:
            raise ModelStoreError(f"{path} does not hold key {key_id} (its content has another id); "
                                  "restore it from the control machine's model keys directory")
        return kek

    def verify_key(self) -> ed25519.Ed25519PublicKey:
        path = self.path / VERIFY_KEY_FILE
        try:
            return load_verify_key(path.read_bytes(), str(path))
        except (FileNotFoundError, PermissionError) as exc:
            raise ModelStoreError(f"cannot read the manifest verify key {path} ({exc.strerror}); deploy "
                                  "the fleet's model keys to this host") from None


def load_verify_key(pem: bytes, where: str) -> ed25519.Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        key = None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ModelStoreError(f"{where} is not an Ed25519 public key in PEM form")
    return key


def wrap_data_key(kek: bytes, data_key: bytes, release_name: str) -> bytes:
    """The text of key.json: `data_key` wrapped by `kek`, bound to `release_name` (name@release)."""
    nonce = os.urandom(12)
    sealed = AESGCM(kek).encrypt(nonce, data_key, INFO_WRAP + release_name.encode())
    document = {"format": KEY_FORMAT, "kek_id": kek_id(kek),
                "wrapped_data_key": base64.b64encode(nonce + sealed).decode()}
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def wrapping_kek_id(key_json: bytes, where: str) -> str:
    """Which KEK wraps the data key in a key.json."""
    return _parse_key_json(key_json, where)["kek_id"]


def unwrap_data_key(key_json: bytes, keys: KeyDirectory, release_name: str, expected_check: str,
                    where: str) -> bytes:
    """The data key from key.json, checked against the manifest's `data_key_check`."""
    document = _parse_key_json(key_json, where)
    kek = keys.kek(document["kek_id"])
    try:
        wrapped = base64.b64decode(document["wrapped_data_key"], validate=True)
        data_key = AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], INFO_WRAP + release_name.encode())
    except (binascii.Error, ValueError, InvalidTag):
        raise ModelStoreError(f"{where}: the data key does not unwrap with key-encryption key "
                              f"{document['kek_id']} for {release_name} (wrong key, or a key.json from "
                              "another release); re-wrap it with `deepfleet model keys rewrap`") from None
    if not hmac.compare_digest(key_check(data_key), expected_check):
        raise ModelStoreError(f"{where}: the unwrapped data key is not the one the signed manifest "
                              "commits to; this key.json belongs to another release")
    return data_key


def _parse_key_json(key_json: bytes, where: str) -> dict:
    try:
        document = json.loads(key_json)
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict) or document.get("format") != KEY_FORMAT or not all(
            isinstance(document.get(field), str) for field in ("kek_id", "wrapped_data_key")):
        raise ModelStoreError(f"{where} is not a deepfleet model key file ({KEY_FORMAT})")
    return document
