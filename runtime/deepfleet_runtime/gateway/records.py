"""The audit records of one request, built from its Exchange (proxy.py): the "started" record
written before anything goes upstream, and the end record (or a refused request's only record).
Their fields are described in docs/gateway.md."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any


def start_record(ex, policy: str) -> dict:
    """The "started" record: who asks what (the prompt, or its SHA-256 under policy "sha256")."""
    inspected = ex.inspected
    record: dict[str, Any] = {
        "type": "started", "time": ex.time, "request_id": ex.request_id, "key_id": ex.key.key_id,
        "client": ex.client, "route": ex.route, "model": inspected.model, "params": inspected.params,
    }
    if policy == "full":
        record["prompt"] = inspected.prompt
    else:
        record["prompt_sha256"] = sha256_json(inspected.prompt)
    return record


def end_record(ex, policy: str) -> dict:
    """The end record (after a "started" one), or the only record of a refused request: a refused
    body is kept by hash and size only, so refusals cannot fill the disk."""
    inspected, forwarded, key = ex.inspected, ex.forwarded, ex.key
    replica = forwarded.replica if forwarded else None
    record: dict[str, Any] = {
        "type": "request", "time": ex.time, "request_id": ex.request_id,
        "key_id": key.key_id if key else None, "client": ex.client, "route": ex.route,
        "model": inspected.model if inspected else None,
    }
    if ex.started_record:
        record.update({"replica": replica.name if replica else None,
                       "release": replica.release if replica else None,
                       "quantization": replica.quantization if replica else None,
                       "attempts": forwarded.attempts if forwarded else 0})
        completion = "".join(ex.completion) if forwarded else None
        if policy == "full":
            record["completion"] = completion
        else:
            record["completion_sha256"] = sha256_json(completion) if completion is not None else None
    elif ex.body:
        record.update({"body_sha256": hashlib.sha256(ex.body).hexdigest(), "body_bytes": len(ex.body)})
    if ex.throttled_before:
        record["throttled_before"] = ex.throttled_before
    usage = ex.usage or {}
    record.update({"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
                   "status": ex.status, "error": ex.error, **({"code": ex.code} if ex.code else {}),
                   "latency_ms": round((time.monotonic() - ex.started) * 1000, 1)})
    return record


def sha256_json(value) -> str:
    """SHA-256 of a string's UTF-8 bytes, or of compact sorted JSON for anything else (chat messages)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True,
                                                            separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
