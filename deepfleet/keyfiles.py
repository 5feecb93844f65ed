"""Private signing keys on the control machine (the CA key, the model signing key), sealed with a
passphrase when DEEPFLEET_KEY_PASSPHRASE is set.

With the variable set when a key is created, it is written as encrypted PKCS#8 (the best
encryption `cryptography` offers: AES-256-CBC under a scrypt-derived key); loading such a key then
needs the same variable. Keys written without it stay readable without (and are refused nowhere):
move an old one under a passphrase with `openssl pkey -in KEY -aes256 -out KEY.new`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization

PASSPHRASE_VARIABLE = "DEEPFLEET_KEY_PASSPHRASE"


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_VARIABLE)
    return value.encode() if value else None


def private_key_pem(key) -> bytes:
    """`key` as PKCS#8 PEM, encrypted under the passphrase when one is set."""
    passphrase = _passphrase()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_private_key(path: Path, error: type[Exception]):
    """The private key in `path`; `error` naming the fix when its passphrase is missing or wrong."""
    data = Path(path).read_bytes()
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    passphrase = _passphrase() if encrypted else None
    if encrypted and passphrase is None:
        raise error(f"{path} is passphrase-protected: set {PASSPHRASE_VARIABLE} to its passphrase")
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except ValueError:
        if encrypted:
            raise error(f"{PASSPHRASE_VARIABLE} does not open {path} (wrong passphrase)") from None
        raise error(f"{path} is not a PEM private key") from None
