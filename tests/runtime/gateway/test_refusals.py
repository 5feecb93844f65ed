"""Refused requests cannot fill the audit disk: their records keep hashes and sizes, never the
prompt, and requests without a valid key are limited per client address before any body is read."""

from __future__ import annotations

import hashlib
import json

import httpx

from .conftest import audit_records, running_gateway, write_gateway
from .fakeupstream import fake_runtime


def _records(site) -> list[dict]:
    return audit_records(site)


def test_refused_requests_are_recorded_by_hash_and_size_only(tmp_path, gateway_pki):
    with fake_runtime() as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}],
                             {"tester": {"rpm": 1}, "other": {"models": ["other"]}},
                             limits={"max_tokens": 64, "default_max_tokens": 16, "max_body_bytes": 1 << 20})
        prompt = "secret clinical text " * 40000  # ~800 KB
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4})
        with running_gateway(site), site.http() as client:
            statuses = [client.post("/v1/chat/completions", content=body,
                                    headers={"content-type": "application/json"}).status_code for _ in range(3)]
            forbidden = client.post("/v1/chat/completions", content=body, headers={
                "content-type": "application/json", "authorization": f"Bearer {site.keys['other']}"})
    assert statuses[1:] == [429, 429] and forbidden.status_code == 403
    refused = [r for r in _records(site) if r["type"] == "request" and r["status"] in (403, 429)]
    assert len(refused) == 3
    for record in refused:
        assert "prompt" not in record and "secret" not in json.dumps(record)
        assert record["body_sha256"] == hashlib.sha256(body.encode()).hexdigest()
        assert record["body_bytes"] == len(body)
    assert sum(path.stat().st_size for path in site.audit_dir.glob("audit-*.jsonl")) < len(body) * 1.5


def test_requests_without_a_valid_key_are_limited_per_address(tmp_path, gateway_pki):
    with fake_runtime() as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}], {"tester": {}},
                             connections={"max_unauthenticated_per_minute": 10})
        with running_gateway(site):
            with httpx.Client(base_url=site.url, verify=site.tls(), headers={"authorization": "Bearer dfk-wrong"}) as bad:
                statuses = [bad.get("/v1/models").status_code for _ in range(40)]
                last = bad.get("/v1/models")
            with site.http() as good:  # a valid key from the same address is not held back
                assert good.get("/v1/models").status_code == 200
            metrics = site.gateway.config.metrics
            text = httpx.get(f"http://{metrics.host}:{metrics.port}/metrics").text
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1 and "valid API key" in last.text
    unauthenticated = [r for r in _records(site) if r["status"] == 401]
    assert len(unauthenticated) == 10  # the 31 refused beyond the limit wrote nothing
    assert "deepfleet_gateway_unauthenticated_throttled_total 31" in text
