"""Budgets per key: tokens per UTC day and calendar month, requests per UTC day.

`check` runs before a request does any upstream work: once a window's budget is used up, the key
is refused (429 `insufficient_quota`) until the window ends, and Retry-After says when. `charge`
runs after each request with the tokens it really used (proxy.Exchange.used_tokens), streamed or
not, also when the client left. A request admitted while the budget still had room may take the
key past it (by at most its own max_tokens, times the key's concurrency); the next is refused.
Every key's usage is counted, so a budget given to a key later starts from what it used already.
The counters (usagestore.py) are the fleet's store when there is one, else a journal on disk.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .auth import KeyRecord, iso_utc
from .store import LimitsStore
from .usagestore import JournalCounts, MemoryCounts, StoreCounts

UTC = datetime.timezone.utc


def day_window(now: datetime.datetime) -> str:
    return f"day:{now:%Y-%m-%d}"


def month_window(now: datetime.datetime) -> str:
    return f"month:{now:%Y-%m}"


def window_end(window: str) -> datetime.datetime:
    """The first instant after `window` (UTC)."""
    kind, _, label = window.partition(":")
    if kind == "day":
        return datetime.datetime.strptime(label, "%Y-%m-%d").replace(tzinfo=UTC) + datetime.timedelta(days=1)
    year, month = (int(part) for part in label.split("-"))
    return datetime.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Exhausted:
    """Why a key may not run a request before `until` (UTC), and how many seconds that is."""

    reason: str
    until: datetime.datetime
    retry_after_s: float


class Budgets:
    """The budgets of every key, counted in `counts`; `clock` gives UTC epoch seconds."""

    def __init__(self, counts: MemoryCounts, clock: Callable[[], float] = time.time):
        self.counts, self._clock = counts, clock
        self._day: str | None = None
        self._windows_of_second: tuple[int, str, str] = (-1, "", "")

    @classmethod
    def for_gateway(cls, store: LimitsStore | None, directory: Path | None,
                    clock: Callable[[], float] = time.time) -> "Budgets":
        """Counted in the fleet's `store`, else in `<directory>/usage.jsonl`, else in memory only."""
        if store is not None:
            return cls(StoreCounts(store, window_end), clock)
        if directory is None:
            return cls(MemoryCounts(), clock)
        now = lambda: datetime.datetime.fromtimestamp(clock(), UTC)  # noqa: E731
        return cls(JournalCounts(directory, lambda window: window_end(window) > now()), clock)

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock(), UTC)

    async def check(self, key: KeyRecord) -> Exhausted | None:
        """None if `key` may run a request now, else which budget is used up and until when."""
        if not (key.tokens_per_day or key.tokens_per_month or key.requests_per_day):
            return None
        now = self.now()
        day, month = day_window(now), month_window(now)
        (day_tokens, day_requests), (month_tokens, _) = await self.counts.usage(key.key_id, [day, month])
        spent = []  # (window, what)
        if key.tokens_per_month and month_tokens >= key.tokens_per_month:
            spent.append((month, f"{month_tokens} of its {key.tokens_per_month} tokens this month"))
        if key.tokens_per_day and day_tokens >= key.tokens_per_day:
            spent.append((day, f"{day_tokens} of its {key.tokens_per_day} tokens today"))
        if key.requests_per_day and day_requests >= key.requests_per_day:
            spent.append((day, f"{day_requests} of its {key.requests_per_day} requests today"))
        if not spent:
            return None
        until = max(window_end(window) for window, _ in spent)
        what = "; ".join(text for _, text in spent)
        return Exhausted(f"this API key has used its quota ({what}, UTC); it renews at {iso_utc(until)}", until,
                         max(1.0, math.ceil((until - now).total_seconds())))

    def charge(self, key: KeyRecord, tokens: int, requests: int = 1) -> None:
        """Add a finished request's real usage to the key's day and month (never waits for a disk or store)."""
        day, month = self._windows_now()
        if self._day is not None and day != self._day:
            self.counts.new_day()  # yesterday's counters are not needed any more
        self._day = day
        self.counts.add(key.key_id, [day, month], max(0, int(tokens)), requests)

    def _windows_now(self) -> tuple[str, str]:
        """(day window, month window) of the clock's current second, formatted once per second (every
        request is charged, so this is on the request path)."""
        second = int(self._clock())
        if second != self._windows_of_second[0]:
            now = datetime.datetime.fromtimestamp(second, UTC)
            self._windows_of_second = (second, day_window(now), month_window(now))
        return self._windows_of_second[1:]

    def close(self) -> None:
        self.counts.close()
