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
    key_id: str
    sha256: str


class KeyStore:
    """The set of valid keys, read from a JSON file {"keys": [{"id": ..., "sha256": ...}]}.

    The file is re-read when its mtime or size changes, so new and revoked keys take effect
    without a restart. A file that cannot be parsed keeps the last good set and logs why.
    """

    def __init__(self, path: Path):
        self._path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._records: tuple[KeyRecord, ...] = ()
        self._refresh()

    def identify(self, presented: str | None) -> str | None:
        """The key id for a presented key, or None; every record is compared, in constant time."""
        self._refresh()
        if not presented:
            return None
        digest = hash_api_key(presented)
        found = None
        for record in self._records:
            if hmac.compare_digest(digest, record.sha256):
                found = record.key_id
        return found

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            if self._records:
                log.warning("API key file %s disappeared; no key is accepted", self._path)
            self._records, self._stamp = (), None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            entries = json.loads(self._path.read_text())["keys"]
            records = tuple(KeyRecord(str(e["id"]), str(e["sha256"]).lower()) for e in entries)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read API key file %s (%s); keeping the previous keys", self._path, exc)
            return
        self._records, self._stamp = records, stamp
        log.info("loaded %d API key(s) from %s", len(records), self._path)
