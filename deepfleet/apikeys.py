"""The control side's API keyring: key ids, SHA-256 hashes and limits; a key is shown once, at creation.

The keyring file (JSON, mode 0600) never holds a key. Revoked keys stay in it, marked with the
time of revocation, so a name (which the audit log records) never comes to mean another key.
The gateway role pushes `host_key_file(...)` (active keys only) to hosts, where the running
gateway re-reads it: new and revoked keys need no restart.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
from pathlib import Path

from deepfleet_runtime.gateway.auth import hash_api_key

from .atomicfile import write_atomic

__all__ = ["KeyringError", "create_key", "revoke_key", "load_keyring", "active_records", "host_key_file",
           "hash_api_key"]

KEY_PREFIX = "dfk-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LIMIT_FIELDS = ("rpm", "tpm", "concurrency", "models", "audit_content")


class KeyringError(ValueError):
    """Bad key name, limit or keyring file; the message names the fix."""


def load_keyring(path: Path) -> list[dict]:
    """The keyring's records, revoked ones included (empty when the file does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["keys"]
    except (ValueError, KeyError) as exc:
        raise KeyringError(f"{path} is not a deepfleet keyring ({exc}); restore it from backup") from None


def active_records(records: list[dict]) -> list[dict]:
    return [record for record in records if not record.get("revoked")]


def create_key(path: Path, name: str, *, rpm: int | None = None, tpm: int | None = None,
               concurrency: int | None = None, models: list[str] | None = None,
               audit_content: str | None = None) -> str:
    """Add a key named `name` with optional limits (None: the gateway's defaults; 0: unlimited);
    returns the key, which is shown only now."""
    if not _NAME.match(name):
        raise KeyringError(f"key name {name!r} is invalid; use letters, digits, '.', '_' or '-' (max 64)")
    for limit_name, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise KeyringError(f"--{limit_name} must be a whole number >= 0 (0 means unlimited), got {value!r}")
    if models is not None and (not models or not all(isinstance(m, str) and m for m in models)):
        raise KeyringError("--models needs at least one model name")
    if audit_content not in (None, "full", "sha256"):
        raise KeyringError(f"--audit-content must be 'full' or 'sha256', got {audit_content!r}")
    records = load_keyring(path)
    for record in records:
        if record["id"] == name:
            state = f"was revoked on {record['revoked']}" if record.get("revoked") else "exists"
            raise KeyringError(f"a key named {name!r} {state}; names are never reused (the audit log "
                               "records them), choose another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = {"id": name, "sha256": hash_api_key(key), "created": _now()}
    limits = {"rpm": rpm, "tpm": tpm, "concurrency": concurrency, "models": models, "audit_content": audit_content}
    record.update({field: value for field, value in limits.items() if value is not None})
    _save(path, [*records, record])
    return key


def revoke_key(path: Path, name: str) -> dict:
    """Mark the key `name` revoked; returns its record. Hosts stop accepting it on the next deploy."""
    records = load_keyring(path)
    for record in records:
        if record["id"] == name:
            if record.get("revoked"):
                raise KeyringError(f"the key {name!r} was already revoked on {record['revoked']}")
            record["revoked"] = _now()
            _save(path, records)
            return record
    known = ", ".join(r["id"] for r in active_records(records)) or "none"
    raise KeyringError(f"no key named {name!r} in {path}; active keys: {known}")


def host_key_file(records: list[dict]) -> str:
    """The JSON the gateway reads on a host: active keys' ids, hashes and limits, in a stable order."""
    entries = [{"id": r["id"], "sha256": r["sha256"], **{f: r[f] for f in LIMIT_FIELDS if r.get(f) is not None}}
               for r in active_records(records)]
    return json.dumps({"keys": sorted(entries, key=lambda e: e["id"])}, indent=1) + "\n"


def _save(path: Path, records: list[dict]) -> None:
    write_atomic(Path(path), json.dumps({"keys": records}, indent=1) + "\n", mode=0o600)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
