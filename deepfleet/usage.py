"""`deepfleet keys usage`: requests, tokens and refusals per day, key or model, summed from the
gateways' audit logs (the source of truth: what `deepfleet audit pull` copied, or any directory
of audit files).

Every "request" record (a request's end, or a refused request's only record) counts once: its
prompt and completion tokens are the upstream's usage (none for refused requests). A refusal is
a record the gateway answered itself: its reason is the record's `code` (invalid_api_key,
key_expired, insufficient_quota, rate_limit_exceeded, ...; records without one: "http <status>").
Requests without a valid key refused beyond the per-address limit get no record of their own;
the next record from that address counts them (`throttled_before`), as "unauthenticated_throttled".
"""

from __future__ import annotations

import csv
import datetime
import io
from dataclasses import dataclass, field
from pathlib import Path

from deepfleet_runtime.gateway.auditchain import ChainBroken, chain_files, parse_line

from .apikeys import KeyringError, parse_duration

GROUPINGS = ("day", "key", "model")
THROTTLED = "unauthenticated_throttled"


class UsageError(ValueError):
    """No audit logs where they were looked for, or a bad --since; the message names the fix."""


@dataclass
class Row:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusals: dict[str, int] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())


def audit_dirs(root: Path) -> list[Path]:
    """`root` if it holds audit files, else its subdirectories that do (one per gateway)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory of audit logs")
    if chain_files(root):
        return [root]
    found = [d for d in sorted(root.iterdir()) if d.is_dir() and chain_files(d)]
    if not found:
        raise UsageError(f"no audit files (audit-*.jsonl) in {root} or its subdirectories; copy the gateways' "
                         "logs here first: deepfleet audit pull INVENTORY")
    return found


def parse_since(text: str | None, now: datetime.datetime | None = None) -> str | None:
    """--since: a date (2025-06-01), an ISO time, or a duration back from now (7d, 12h); as an ISO
    UTC prefix comparable with records' `time`."""
    if text is None:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        moment = now - parse_duration(text, "--since")
    except KeyringError:
        try:
            moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"--since must be a date (2025-06-01), a UTC time (2025-06-01T12:00:00Z) or a "
                             f"duration such as 7d, got {text!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def records(directory: Path):
    """The "request" records of one gateway's audit files, in order; ChainBroken names a bad line."""
    for _, path in chain_files(directory):
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.endswith(b"\n"):
                    break  # the gateway is writing it (a live directory): not a record yet
                _, _, _, record = parse_line(raw, f"{path.name} line {number}")
                if record.get("type") == "request":
                    yield record


def summarize(directories: list[Path], by: str = "day", since: str | None = None) -> dict[str, Row]:
    """Rows keyed by day, key id or model, in key order."""
    if by not in GROUPINGS:
        raise UsageError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    rows: dict[str, Row] = {}
    for directory in directories:
        for record in records(directory):
            time = str(record.get("time", ""))
            if since and time < since:
                continue
            group = {"day": time[:10], "key": record.get("key_id"), "model": record.get("model")}[by] or "-"
            row = rows.setdefault(str(group), Row())
            row.requests += 1
            row.prompt_tokens += int(record.get("prompt_tokens") or 0)
            row.completion_tokens += int(record.get("completion_tokens") or 0)
            reason = refusal_reason(record)
            if reason:
                row.refusals[reason] = row.refusals.get(reason, 0) + 1
            throttled = int(record.get("throttled_before") or 0)
            if throttled:
                row.requests += throttled
                row.refusals[THROTTLED] = row.refusals.get(THROTTLED, 0) + throttled
    return dict(sorted(rows.items()))


def refusal_reason(record: dict) -> str | None:
    """Why the gateway refused this request itself, or None if it went to a replica and back."""
    if record.get("code"):
        return str(record["code"])
    status = record.get("status") or 0
    if record.get("attempts"):
        return None  # a replica answered it (its own errors included)
    if (400 <= status < 500 and status != 499) or status == 503:
        return f"http {status}"
    return None


def render_table(rows: dict[str, Row], by: str) -> str:
    """A table with a TOTAL line, for a terminal."""
    lines = [(by.upper(), "REQUESTS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "REFUSED", "REFUSALS")]
    total = Row()
    for group, row in rows.items():
        lines.append((group, str(row.requests), str(row.prompt_tokens), str(row.completion_tokens),
                      str(row.refused), _reasons(row)))
        _add(total, row)
    lines.append(("TOTAL", str(total.requests), str(total.prompt_tokens), str(total.completion_tokens),
                  str(total.refused), _reasons(total)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines) + "\n"


def render_csv(rows: dict[str, Row], by: str) -> str:
    """CSV, one column per refusal reason found."""
    reasons = sorted({reason for row in rows.values() for reason in row.refusals})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, "requests", "prompt_tokens", "completion_tokens", "refused",
                     *(f"refused_{r.replace(' ', '_')}" for r in reasons)])
    for group, row in rows.items():
        writer.writerow([group, row.requests, row.prompt_tokens, row.completion_tokens, row.refused,
                         *(row.refusals.get(r, 0) for r in reasons)])
    return out.getvalue()


def _reasons(row: Row) -> str:
    return ", ".join(f"{reason}={count}" for reason, count in sorted(row.refusals.items())) or "-"


def _add(total: Row, row: Row) -> None:
    total.requests += row.requests
    total.prompt_tokens += row.prompt_tokens
    total.completion_tokens += row.completion_tokens
    for reason, count in row.refusals.items():
        total.refusals[reason] = total.refusals.get(reason, 0) + count


__all__ = ["UsageError", "Row", "audit_dirs", "parse_since", "summarize", "render_table", "render_csv",
           "ChainBroken"]
