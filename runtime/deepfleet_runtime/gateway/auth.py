"""API keys: stored as SHA-256 hashes, compared in constant time, reloaded when the file changes.

A key may expire (`expires`, ISO 8601 with its offset); the gateway then answers 401 `key_expired`
naming the time. A rotated key has several entries under one id (the new secret and the old ones
with the end of their grace as expiry), so its limits, budgets and audit trail carry on.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def hash_api_key(key: str) -> str:
    """The stored form of an API key (keys are 256-bit random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """One key as the gateway knows it. A limit of None means the gateway's default for it."""

    key_id: str
    sha256: str
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (prompt + completion)
    concurrency: int | None = None  # requests in flight at once
    models: tuple[str, ...] | None = None  # the models this key may use; None = all
    audit_content: str | None = None  # "full" or "sha256"; None = the gateway's audit policy
    tokens_per_day: int | None = None  # budgets (budgets.py), UTC windows; None or 0 = none
    tokens_per_month: int | None = None
    requests_per_day: int | None = None
    expires: datetime.datetime | None = None  # from then on the key gets 401 key_expired

    def expired(self, now: datetime.datetime) -> bool:
        """Whether the key is past its expiry at `now` (an aware datetime)."""
        return self.expires is not None and now >= self.expires

    @classmethod
    def from_entry(cls, entry: dict) -> "KeyRecord":
        """A record from one entry of the host key file; raises ValueError/KeyError/TypeError."""
        def limit(name):
            value = entry.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"key {entry['id']}: {name} must be a whole number >= 0")
            return value

        models = entry.get("models")
        content = entry.get("audit_content")
        if content not in (None, "full", "sha256"):
            raise ValueError(f"key {entry['id']}: audit_content must be 'full' or 'sha256'")
        expires = entry.get("expires")
        if expires is not None:
            expires = parse_utc(expires, f"key {entry['id']}: expires")
        return cls(str(entry["id"]), str(entry["sha256"]).lower(), limit("rpm"), limit("tpm"),
                   limit("concurrency"), tuple(str(m) for m in models) if models is not None else None,
                   content, limit("tokens_per_day"), limit("tokens_per_month"), limit("requests_per_day"), expires)


def parse_utc(text, what: str) -> datetime.datetime:
    """An ISO 8601 time with its offset (or Z), as an aware UTC datetime; ValueError naming `what`."""
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} must be an ISO 8601 time such as 2025-06-30T00:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what} must say its time zone (end it in Z for UTC), got {text!r}")
    return moment.astimezone(datetime.timezone.utc)


def iso_utc(moment: datetime.datetime) -> str:
    """`moment` as ISO 8601 UTC to the second, ending in Z."""
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class KeyStore:
    """The set of valid keys, read from a JSON file {"keys": [{"id": ..., "sha256": ..., ...}]}.

    The file is re-read when its mtime, size or inode changes, so new and revoked keys take effect
    without a restart (requests already admitted finish). A file that cannot be parsed keeps the
    last good set and logs why. `state()` says which file content is in force (its SHA-256), so
    whoever replaced the file can confirm the gateway reads it (`deepfleet keys revoke`).
    """

    def __init__(self, path: Path):
        self._path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._records: tuple[KeyRecord, ...] = ()
        self._digest: str | None = None  # SHA-256 of the file content in force
        self._error: str | None = None  # why the file on disk is not in force, if it is not
        self._refresh()

    def state(self, reload: bool = False) -> dict:
        """The key file in force: path, SHA-256 of its content, number of entries, and the error
        that keeps a newer file out, if any; `reload` reads the file first, even if it looks unchanged."""
        if reload:
            self._stamp = None
        self._refresh()
        return {"file": str(self._path), "sha256": self._digest, "entries": len(self._records),
                "error": self._error}

    def identify(self, presented: str | None) -> KeyRecord | None:
        """The record of a presented key, or None; every record is compared, in constant time."""
        self._refresh()
        if not presented:
            return None
        digest = hash_api_key(presented)
        found = None
        for record in self._records:
            if hmac.compare_digest(digest, record.sha256):
                found = record
        return found

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            if self._records:
                log.warning("API key file %s disappeared; no key is accepted", self._path)
            self._records, self._stamp, self._digest = (), None, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        self._stamp = stamp  # a bad file is reported once, not on every request
        try:
            content = self._path.read_bytes()
            entries = json.loads(content)["keys"]
            records = tuple(KeyRecord.from_entry(e) for e in entries)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read API key file %s (%s); keeping the previous keys", self._path, exc)
            self._error = f"{type(exc).__name__}: {exc}"
            return
        self._records, self._digest, self._error = records, hashlib.sha256(content).hexdigest(), None
        log.info("loaded %d API key(s) from %s", len(records), self._path)
