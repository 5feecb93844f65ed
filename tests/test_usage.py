"""`deepfleet keys usage`: requests, tokens and refusals by day, key or model, from audit logs
written by the gateway's own AuditLog (a real hash chain) with the records' fields as the gateway
writes them (gateway/records.py); two gateways' directories are summed."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest

from deepfleet.cli import main
from deepfleet.usage import UsageError, audit_dirs, parse_since, summarize
from deepfleet_runtime.gateway.audit import AuditLog
from deepfleet_runtime.gateway.config import AuditSection


def _served(time: str, key: str, model: str, prompt: int, completion: int) -> dict:
    return {"type": "request", "time": time, "key_id": key, "model": model, "replica": "r1", "attempts": 1,
            "prompt_tokens": prompt, "completion_tokens": completion, "status": 200, "error": None}


def _refused(time: str, key: str | None, status: int, code: str | None, **extra) -> dict:
    return {"type": "request", "time": time, "key_id": key, "model": "m1" if key else None, "prompt_tokens": None,
            "completion_tokens": None, "status": status, "error": "refused",
            **({"code": code} if code else {}), **extra}


def _write(directory, records: list[dict]) -> None:
    async def run():
        log = AuditLog(AuditSection(dir=directory))
        try:
            for record in records:
                await log.append(record)
        finally:
            log.close()

    asyncio.run(run())


@pytest.fixture
def logs(tmp_path):
    _write(tmp_path / "gw1", [
        _served("2026-03-01T10:00:00.000Z", "a", "m1", 10, 5),
        {"type": "started", "time": "2026-03-01T10:00:01.000Z", "key_id": "a", "model": "m1"},
        _served("2026-03-01T10:00:01.000Z", "a", "m1", 7, 3),
        _refused("2026-03-01T11:00:00.000Z", "a", 429, "insufficient_quota"),
        _refused("2026-03-02T09:00:00.000Z", "b", 401, "key_expired"),
        _refused("2026-03-02T09:00:01.000Z", None, 401, "invalid_api_key", throttled_before=3),
    ])
    _write(tmp_path / "gw2", [
        _served("2026-03-02T12:00:00.000Z", "b", "m2", 20, 8),
        _refused("2026-03-02T12:00:01.000Z", "b", 429, "rate_limit_exceeded"),
        _refused("2026-03-02T12:00:02.000Z", "b", 400, None),  # an older record without a code
        {"type": "probe", "time": "2026-03-02T12:00:03.000Z", "key_id": None, "status": 200},
    ])
    return tmp_path


def test_usage_by_key_sums_both_gateways_and_names_every_refusal(logs):
    rows = summarize(audit_dirs(logs), "key")
    assert list(rows) == ["-", "a", "b"]
    a, b, anonymous = rows["a"], rows["b"], rows["-"]
    assert (a.requests, a.prompt_tokens, a.completion_tokens, a.refusals) == (3, 17, 8, {"insufficient_quota": 1})
    assert (b.requests, b.prompt_tokens, b.completion_tokens) == (4, 20, 8)
    assert b.refusals == {"key_expired": 1, "rate_limit_exceeded": 1, "http 400": 1}
    assert anonymous.requests == 4 and anonymous.refusals == {"invalid_api_key": 1, "unauthenticated_throttled": 3}


def test_usage_by_day_since_a_date_and_as_csv(logs, capsys):
    assert list(summarize(audit_dirs(logs), "day", parse_since("2026-03-02"))) == ["2026-03-02"]
    assert main(["keys", "usage", str(logs), "--by", "model", "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_model = {row["model"]: row for row in table}
    assert by_model["m1"]["requests"] == "6" and by_model["m1"]["prompt_tokens"] == "17"
    assert by_model["m2"]["completion_tokens"] == "8"
    assert by_model["-"]["refused_invalid_api_key"] == "1"
    assert main(["keys", "usage", str(logs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["DAY", "REQUESTS", "PROMPT_TOKENS"] and lines[-1].split()[:4] == ["TOTAL", "11",
                                                                                                      "37", "16"]


def test_bad_input_names_the_fix(tmp_path, capsys):
    with pytest.raises(UsageError, match="--since"):
        parse_since("yesterday")
    with pytest.raises(UsageError, match="audit pull"):
        audit_dirs(tmp_path)
    assert main(["keys", "usage", str(tmp_path), "--since", "last week"]) == 2
    assert "--since must be" in capsys.readouterr().err
    assert main(["keys", "usage", str(tmp_path / "missing.py")]) == 2
    assert "neither an inventory nor a directory" in capsys.readouterr().err
