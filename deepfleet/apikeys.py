"""The control side's API keyring: key ids and SHA-256 hashes; a key is shown once, at creation.

The keyring file (JSON, mode 0600) is what the gateway role pushes to hosts; it never holds a key.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
from pathlib import Path

from deepfleet_runtime.gateway.auth import hash_api_key

from .atomicfile import write_atomic

KEY_PREFIX = "dfk-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class KeyringError(ValueError):
    """Bad key name or keyring file; the message names the fix."""


def load_keyring(path: Path) -> list[dict]:
    """The keyring's records (empty when the file does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["keys"]
    except (ValueError, KeyError) as exc:
        raise KeyringError(f"{path} is not a deepfleet keyring ({exc}); restore it from backup") from None


def create_key(path: Path, name: str) -> str:
    """Add a new key named `name` to the keyring at `path`; returns the key (shown only now)."""
    if not _NAME.match(name):
        raise KeyringError(f"key name {name!r} is invalid; use letters, digits, '.', '_' or '-' (max 64)")
    records = load_keyring(path)
    if any(record["id"] == name for record in records):
        raise KeyringError(f"a key named {name!r} exists; revoke it first or choose another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records.append({"id": name, "sha256": hash_api_key(key), "created": created})
    write_atomic(Path(path), json.dumps({"keys": records}, indent=1) + "\n", mode=0o600)
    return key


def host_key_file(records: list[dict]) -> str:
    """The JSON the gateway reads on a host: ids and hashes only, in a stable order."""
    entries = sorted(({"id": r["id"], "sha256": r["sha256"]} for r in records), key=lambda r: r["id"])
    return json.dumps({"keys": entries}, indent=1) + "\n"
