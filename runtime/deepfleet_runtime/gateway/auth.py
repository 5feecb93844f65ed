"""API keys: stored as SHA-256 hashes, compared in constant time, reloaded when the file changes."""

from __future__ import annotations

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
        return cls(str(entry["id"]), str(entry["sha256"]).lower(), limit("rpm"), limit("tpm"),
                   limit("concurrency"), tuple(str(m) for m in models) if models is not None else None,
                   content)


class KeyStore:
    """The set of valid keys, read from a JSON file {"keys": [{"id": ..., "sha256": ..., ...}]}.

    The file is re-read when its mtime or size changes, so new and revoked keys take effect
    without a restart (requests already admitted finish). A file that cannot be parsed keeps the
    last good set and logs why.
    """

    def __init__(self, path: Path):
        self._path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._records: tuple[KeyRecord, ...] = ()
        self._refresh()

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
            self._records, self._stamp = (), None
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        self._stamp = stamp  # a bad file is reported once, not on every request
        try:
            entries = json.loads(self._path.read_text())["keys"]
            records = tuple(KeyRecord.from_entry(e) for e in entries)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read API key file %s (%s); keeping the previous keys", self._path, exc)
            return
        self._records = records
        log.info("loaded %d API key(s) from %s", len(records), self._path)
