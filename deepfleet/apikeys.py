"""The control side's API keyring: key ids, SHA-256 hashes and limits; a key is shown once, at creation.

The keyring file (JSON, mode 0600) never holds a key. Revoked keys stay in it, marked with the
time of revocation, so a name (which the audit log records) never comes to mean another key.
The gateway role pushes `host_key_file(...)` (active keys only) to hosts, where the running
gateway re-reads it: new and revoked keys need no restart; `deepfleet keys revoke NAME INVENTORY`
pushes it at once (deepfleet/keypush.py).

A key may expire (`expires`, ISO 8601 UTC); the gateway then answers 401 `key_expired`.
Rotation gives a key a new secret under the same name (so its budget, limits and audit trail
carry on); the old secret's hash stays in `previous` with its own expiry, the end of the grace.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
from pathlib import Path

from deepfleet_runtime.gateway.auth import hash_api_key, iso_utc, parse_utc

from .atomicfile import write_atomic

__all__ = ["KeyringError", "create_key", "revoke_key", "rotate_key", "load_keyring", "active_records",
           "host_key_file", "hash_api_key", "parse_duration", "parse_expiry"]

KEY_PREFIX = "dfk-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LIMIT_FIELDS = ("rpm", "tpm", "concurrency", "models", "audit_content", "tokens_per_day", "tokens_per_month",
                "requests_per_day")
BUDGET_FIELDS = ("tokens_per_day", "tokens_per_month", "requests_per_day")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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


def parse_duration(text: str, option: str) -> datetime.timedelta:
    """'90d', '24h', '30m', '45s', '2w' as a timedelta; KeyringError naming `option` otherwise."""
    match = _DURATION.match(str(text).strip())
    if not match or not int(match.group(1)):
        raise KeyringError(f"{option} must be a duration such as 90d, 24h, 30m or 2w, got {text!r}")
    return datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_expiry(text: str, now: datetime.datetime | None = None) -> str:
    """--expires: a duration from now (90d) or an ISO 8601 time (2025-12-31T00:00:00Z), as ISO UTC."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if _DURATION.match(str(text).strip()):
        return iso_utc(now + parse_duration(text, "--expires"))
    try:
        moment = parse_utc(text, "--expires")
    except ValueError as exc:
        raise KeyringError(f"{exc}, or a duration such as 90d") from None
    if moment <= now:
        raise KeyringError(f"--expires {text} is in the past; give a later time or a duration such as 90d")
    return iso_utc(moment)


def create_key(path: Path, name: str, *, rpm: int | None = None, tpm: int | None = None,
               concurrency: int | None = None, models: list[str] | None = None,
               audit_content: str | None = None, tokens_per_day: int | None = None,
               tokens_per_month: int | None = None, requests_per_day: int | None = None,
               expires: str | None = None) -> str:
    """Add a key named `name` with optional limits (None: the gateway's defaults; 0: unlimited),
    budgets (None or 0: none) and expiry (parse_expiry's text); returns the key, shown only now."""
    if not _NAME.match(name):
        raise KeyringError(f"key name {name!r} is invalid; use letters, digits, '.', '_' or '-' (max 64)")
    for limit_name, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency),
                              ("tokens-per-day", tokens_per_day), ("tokens-per-month", tokens_per_month),
                              ("requests-per-day", requests_per_day)):
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
    if expires is not None:
        record["expires"] = parse_expiry(expires)
    limits = {"rpm": rpm, "tpm": tpm, "concurrency": concurrency, "models": models, "audit_content": audit_content,
              "tokens_per_day": tokens_per_day, "tokens_per_month": tokens_per_month,
              "requests_per_day": requests_per_day}
    record.update({field: value for field, value in limits.items() if value is not None})
    _save(path, [*records, record])
    return key


def rotate_key(path: Path, name: str, grace: str = "24h", expires: str | None = None) -> tuple[str, dict]:
    """Give the key `name` a new secret; the old one stays valid for `grace` (a duration), then
    expires. The new secret expires at `expires`, else after the lifetime the old one had (if it
    had one). Returns (the new key, shown only now; the record)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    grace_end = iso_utc(now + parse_duration(grace, "--grace"))
    new_expiry = parse_expiry(expires, now) if expires is not None else None
    records = load_keyring(path)
    record = _find(path, records, name)
    if record.get("revoked"):
        raise KeyringError(f"the key {name!r} was revoked on {record['revoked']}; create a new key instead")
    if new_expiry is None and record.get("expires"):
        issued = parse_utc(record.get("rotated") or record["created"], "created")
        new_expiry = iso_utc(now + (parse_utc(record["expires"], "expires") - issued))
    old_end = min(grace_end, record["expires"], key=lambda t: parse_utc(t, "expires")) \
        if record.get("expires") else grace_end
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record["previous"] = [*record.get("previous", []),
                          {"sha256": record["sha256"], "expires": old_end, "rotated": iso_utc(now)}]
    record.update({"sha256": hash_api_key(key), "rotated": iso_utc(now)})
    if new_expiry is None:
        record.pop("expires", None)
    else:
        record["expires"] = new_expiry
    _save(path, records)
    return key, record


def _find(path: Path, records: list[dict], name: str) -> dict:
    for record in records:
        if record["id"] == name:
            return record
    known = ", ".join(r["id"] for r in active_records(records)) or "none"
    raise KeyringError(f"no key named {name!r} in {path}; active keys: {known}")


def revoke_key(path: Path, name: str) -> dict:
    """Mark the key `name` revoked; returns its record. Gateways refuse it once the host key file
    reaches them (keypush.push_key_file, or the next deploy)."""
    records = load_keyring(path)
    record = _find(path, records, name)
    if record.get("revoked"):
        raise KeyringError(f"the key {name!r} was already revoked on {record['revoked']}")
    record["revoked"] = _now()
    _save(path, records)
    return record


def host_key_file(records: list[dict]) -> str:
    """The JSON the gateway reads on a host: active keys' ids, hashes, limits and expiry, one entry
    per secret (a rotated key's old secrets too, with their own expiry), in a stable order."""
    entries = []
    for r in active_records(records):
        limits = {f: r[f] for f in LIMIT_FIELDS if r.get(f) is not None}
        entries.append({"id": r["id"], "sha256": r["sha256"], **limits,
                        **({"expires": r["expires"]} if r.get("expires") else {})})
        entries.extend({"id": r["id"], "sha256": old["sha256"], **limits, "expires": old["expires"]}
                       for old in r.get("previous", []))
    return json.dumps({"keys": sorted(entries, key=lambda e: (e["id"], e.get("expires") or "~"))}, indent=1) + "\n"


def _save(path: Path, records: list[dict]) -> None:
    write_atomic(Path(path), json.dumps({"keys": records}, indent=1) + "\n", mode=0o600)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
