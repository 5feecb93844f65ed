"""Usage counters of a key in a window ("day:2025-01-31", "month:2025-01"): tokens and requests,
kept where budgets (budgets.py) read them. Three kinds, one interface (`usage`, `add`, `close`):

- `MemoryCounts`: in memory only (a gateway without a state directory; tests).
- `JournalCounts` (one gateway): an append-only journal `<dir>/usage.jsonl`. Every charge is one
  line `{"k": key_id, "w": window, "t": tokens, "r": requests}` written with a single write() to
  an O_APPEND file, so a crash or `kill -9` after it loses nothing; a background thread fdatasyncs
  the file as soon as there is something new (a power loss may lose the last few milliseconds).
  At start and when the UTC day changes the journal is compacted: the sums of the windows still
  open go to a temporary file, fsynced and renamed over it. A torn last line (a crash mid-write) is
  skipped when the journal is read. A write that fails (disk full) is logged and counted in memory.
- `StoreCounts` (a fleet): hashes in the shared store (HINCRBY, expiring a month after the window),
  so every gateway sees the others' usage. While the store does not answer, charges are kept here
  and handed over when it answers again; reads use the last values seen plus those charges times
  the number of gateways, so each gateway spends at most its share of what was left.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable

from ..atomicfile import write_atomic
from .store import LimitsStore, StoreDown

log = logging.getLogger(__name__)
KEEP_AFTER_WINDOW_S = 35 * 86400  # a window's counters stay in the store this long after it ends


class MemoryCounts:
    """Counters in memory only."""

    def __init__(self):
        self._counts: dict[tuple[str, str], list[int]] = {}

    async def usage(self, key_id: str, windows: list[str]) -> list[tuple[int, int]]:
        """(tokens, requests) charged to `key_id` in each of `windows` so far."""
        return [tuple(self._counts.get((key_id, window), (0, 0))) for window in windows]

    def add(self, key_id: str, windows: list[str], tokens: int, requests: int) -> None:
        """Charge `tokens` and `requests` to `key_id` in each of `windows`."""
        self._count(key_id, windows, tokens, requests)

    def _count(self, key_id: str, windows: list[str], tokens: int, requests: int) -> None:
        for window in windows:
            counts = self._counts.setdefault((key_id, window), [0, 0])
            counts[0] += tokens
            counts[1] += requests

    def new_day(self) -> None:
        """The UTC day changed (the journal drops closed windows)."""

    def close(self) -> None:
        """Make everything charged durable and release the counters."""


class JournalCounts(MemoryCounts):
    """Counters in `<directory>/usage.jsonl`; `is_open(window)` says which windows a compaction keeps."""

    def __init__(self, directory: Path, is_open: Callable[[str], bool]):
        super().__init__()
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._path = self._dir / "usage.jsonl"
        self._is_open = is_open
        self._fd: int | None = None
        self.write_failures = 0
        self._dirty = threading.Event()
        self._closing = False
        self._lock = threading.Lock()  # the fd, between writes, compaction and the syncing thread
        self._read()
        self.new_day()
        self._thread = threading.Thread(target=self._sync_loop, name="usage-journal", daemon=True)
        self._thread.start()

    def add(self, key_id: str, windows: list[str], tokens: int, requests: int) -> None:
        self._count(key_id, windows, tokens, requests)
        lines = b"".join(_line(key_id, window, tokens, requests) for window in windows)
        try:
            with self._lock:
                os.write(self._fd, lines)
        except OSError as exc:
            self.write_failures += 1
            log.error("cannot append to the usage journal %s (%s); the charge is counted in memory only",
                      self._path, exc)
            return
        self._dirty.set()

    def new_day(self) -> None:
        """Rewrite the journal as one line per open window (temporary file, fsync, rename)."""
        with self._lock:
            self._counts = {kw: c for kw, c in self._counts.items() if self._is_open(kw[1])}
            body = b"".join(_line(k, w, t, r) for (k, w), (t, r) in sorted(self._counts.items()))
            try:
                write_atomic(self._path, body, mode=0o640)
            except OSError as exc:
                log.error("cannot compact the usage journal %s (%s); appending to it as it is", self._path, exc)
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def close(self) -> None:
        self._closing = True
        self._dirty.set()
        self._thread.join(timeout=10)
        with self._lock:
            if self._fd is not None:
                os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = None

    def _read(self) -> None:
        if not self._path.exists():
            return
        for number, raw in enumerate(self._path.read_bytes().split(b"\n"), 1):
            if not raw:
                continue
            try:
                entry = json.loads(raw)
                self._count(str(entry["k"]), [str(entry["w"])], int(entry["t"]), int(entry["r"]))
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d is not a usage entry (a write cut off by a crash?); skipped",
                            self._path, number)

    def _sync_loop(self) -> None:
        while not self._closing:
            self._dirty.wait()
            self._dirty.clear()
            with self._lock:  # a copy of the fd: a charge never waits for the disk
                fd = os.dup(self._fd) if self._fd is not None else None
            if fd is None:
                continue
            try:
                os.fdatasync(fd)
            except OSError:
                log.exception("cannot fdatasync the usage journal %s", self._path)
            finally:
                os.close(fd)


class StoreCounts(MemoryCounts):
    """Counters in the shared store; charges made while it is down are kept (in `_counts`) and
    handed over when it answers again. `window_end(window)` is when a window closes."""

    def __init__(self, store: LimitsStore, window_end: Callable[[str], datetime.datetime]):
        super().__init__()  # the pending charges
        self.store, self._window_end = store, window_end
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}  # the store's values, last read
        store.on_recovery(self._hand_over)

    def _key(self, key_id: str, window: str) -> str:
        return self.store.key("usage", key_id, window)

    async def usage(self, key_id: str, windows: list[str]) -> list[tuple[int, int]]:
        """The store's counts; while it does not answer, the last counts seen plus this gateway's
        charges since, times the number of gateways (each may spend its share of what is left)."""
        if self.store.up:
            try:
                async def read(client):
                    pipe = client.pipeline(transaction=False)
                    for window in windows:
                        pipe.hmget(self._key(key_id, window), "t", "r")
                    return await pipe.execute()
                for window, (tokens, requests) in zip(windows, await self.store.call(read)):
                    self._seen[(key_id, window)] = (int(tokens or 0), int(requests or 0))
            except StoreDown:
                pass
        pending = await super().usage(key_id, windows)
        share = 1 if self.store.up else self.store.section.gateways
        return [(seen[0] + extra[0] * share, seen[1] + extra[1] * share) for seen, extra in
                zip((self._seen.get((key_id, w), (0, 0)) for w in windows), pending)]

    def add(self, key_id: str, windows: list[str], tokens: int, requests: int) -> None:
        if not self.store.up:
            self._count(key_id, windows, tokens, requests)
            return

        async def write() -> None:
            try:
                await self.store.call(lambda client: self._increment(client, key_id, windows, tokens, requests))
            except StoreDown:
                self._count(key_id, windows, tokens, requests)

        self.store.spawn(write())

    async def _increment(self, client, key_id: str, windows: list[str], tokens: int, requests: int):
        pipe = client.pipeline(transaction=True)
        for window in windows:
            name = self._key(key_id, window)
            pipe.hincrby(name, "t", tokens)
            pipe.hincrby(name, "r", requests)
            pipe.expireat(name, int(self._window_end(window).timestamp()) + KEEP_AFTER_WINDOW_S)
        return await pipe.execute()

    async def _hand_over(self) -> None:
        """Add what was counted here while the store was down to the store; what could not be
        handed over stays here for the next try (the store failing again raises)."""
        for (key_id, window), (tokens, requests) in list(self._counts.items()):
            await self._increment(self.store.client, key_id, [window], tokens, requests)
            counts = self._counts[(key_id, window)]  # charges made meanwhile stay
            counts[0] -= tokens
            counts[1] -= requests
            if counts == [0, 0]:
                del self._counts[(key_id, window)]
            seen = self._seen.get((key_id, window), (0, 0))
            self._seen[(key_id, window)] = (seen[0] + tokens, seen[1] + requests)


def _line(key_id: str, window: str, tokens: int, requests: int) -> bytes:
    return json.dumps({"k": key_id, "w": window, "t": tokens, "r": requests}, separators=(",", ":")).encode() + b"\n"
