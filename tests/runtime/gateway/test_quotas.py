"""Quotas through real gateways (TLS listeners, the openai SDK) in front of the session's runtime:
two gateways sharing a real redis-server over TLS with a password, the store lost and back, daily
budgets that survive a restart, expired and rotated keys, the key file's digest on the admin socket."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import subprocess
import threading

import httpx
import openai
import pytest

from deepfleet.apikeys import rotate_key
from tests.runtime.gateway.conftest import RUNTIME_COMMAND, running_gateway, write_gateway
from tests.runtime.gateway.redisserver import RedisServer

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def store(tmp_path_factory, gateway_pki):
    with RedisServer(tmp_path_factory.mktemp("store"), tls=(gateway_pki.ca, gateway_pki.cert, gateway_pki.key)) as server:
        yield server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, gateway_pki, runtime_url, store):
    """Two gateways in front of one replica, sharing `store`, with the same key file."""
    root = tmp_path_factory.mktemp("quota-fleet")
    limits = {"limits_store": store.section(gateways=2)}
    first = write_gateway(root / "g1", gateway_pki, [{"url": runtime_url, "name": "r1"}],
                          {"paced": {"rpm": 6, "tpm": 0, "concurrency": 0},
                           "outage": {"rpm": 4, "tpm": 0, "concurrency": 0},
                           "daily": {"rpm": 0, "tpm": 0, "concurrency": 0, "tokens_per_day": 40}}, **limits)
    second = write_gateway(root / "g2", gateway_pki, [{"url": runtime_url, "name": "r1"}], {}, **limits)
    second.keyring.write_text(first.keyring.read_text())
    second.keys = dict(first.keys)
    second.publish_keys()
    with running_gateway(first), running_gateway(second):
        yield first, second


def _ask_all(sites, key_name: str, count: int) -> list[httpx.Response]:
    """`count` requests per gateway at once, four threads per gateway."""
    answers, lock = [], threading.Lock()

    def ask(site):
        with site.http(key_name) as client:
            for _ in range(count // 4):
                response = client.post("/v1/chat/completions", json=CHAT)
                with lock:
                    answers.append(response)

    threads = [threading.Thread(target=ask, args=(site,)) for site in sites for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def test_two_gateways_under_concurrent_load_admit_no_more_than_the_key_may_per_minute(fleet):
    answers = _ask_all(fleet, "paced", 16)
    accepted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(answers) == 32 and len(accepted) + len(refused) == 32
    assert 6 <= len(accepted) <= 7  # N, +1 for a refill while the test runs (one per 10 s)
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1
               for r in refused)
    for site in fleet:
        assert httpx.get(f"{site.url}/ready", verify=site.tls()).json()["limits"]["store"] == "ok"


def test_store_lost_each_gateway_serves_its_share_says_so_and_shares_again_when_it_is_back(fleet, store):
    store.stop()
    try:
        answers = _ask_all(fleet, "outage", 8)
        assert sum(a.status_code == 200 for a in answers) == 4  # 2 of 4 per gateway: never more, never none
        assert {a.status_code for a in answers} == {200, 429}
        for site in fleet:
            ready = httpx.get(f"{site.url}/ready", verify=site.tls())
            assert ready.status_code == 200 and ready.json()["limits"]["store"] == "unreachable"
            assert ready.json()["limits"]["local_fraction"] == 0.5
            metrics = httpx.get(f"http://127.0.0.1:{_metrics_port(site)}/metrics").text
            assert "deepfleet_gateway_limits_store_up 0" in metrics
            assert "deepfleet_gateway_limits_local_admitted_total 2" in metrics
    finally:
        store.start()
    for site in fleet:
        _wait(lambda: httpx.get(f"{site.url}/ready", verify=site.tls()).json()["limits"]["store"] == "ok")
        metrics = httpx.get(f"http://127.0.0.1:{_metrics_port(site)}/metrics").text
        assert "deepfleet_gateway_limits_store_up 1" in metrics
        assert "deepfleet_gateway_limits_store_failures_total 1" in metrics


def test_a_daily_token_budget_is_shared_by_the_gateways_and_refused_until_midnight_utc(fleet):
    first, second = fleet
    used = 0
    with first.openai("daily") as client_a, second.openai("daily") as client_b:
        for client in [client_a, client_b] * 10:
            try:
                answer = client.chat.completions.create(**CHAT)
            except openai.RateLimitError as exc:
                refusal = exc
                break
            used += answer.usage.total_tokens
        else:
            pytest.fail("the budget of 40 tokens per day was never reached")
    assert used >= 40 and refusal.code == "insufficient_quota" and refusal.body["type"] == "insufficient_quota"
    now = datetime.datetime.now(datetime.timezone.utc)
    midnight = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time(),
                                         datetime.timezone.utc)
    assert abs(int(refusal.response.headers["retry-after"]) - math.ceil((midnight - now).total_seconds())) <= 5
    assert f"renews at {midnight:%Y-%m-%dT%H:%M:%SZ}" in refusal.message
    for site in fleet:  # the other gateway refuses too: the count is the store's
        with site.http("daily") as client:
            assert client.post("/v1/chat/completions", json=CHAT).json()["error"]["code"] == "insufficient_quota"


def test_a_daily_budget_survives_a_restart_of_a_lone_gateway(tmp_path, gateway_pki, runtime_url):
    site = write_gateway(tmp_path / "lone", gateway_pki, [{"url": runtime_url, "name": "r1"}],
                         {"daily": {"rpm": 0, "tpm": 0, "tokens_per_day": 20, "requests_per_day": 100}},
                         state_dir=str(tmp_path / "state"))
    with running_gateway(site), site.http("daily") as client:
        codes = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(10)]
    assert codes[0] == 200 and 429 in codes
    journal = (tmp_path / "state" / "budgets" / "usage.jsonl").read_text()
    assert '"k":"daily"' in journal
    with running_gateway(site), site.http("daily") as client:
        refused = client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert "tokens today" in refused.json()["error"]["message"]


def test_an_expired_key_gets_401_naming_its_expiry_and_a_rotated_key_works_old_and_new(tmp_path, gateway_pki,
                                                                                       runtime_url):
    site = write_gateway(tmp_path / "expiry", gateway_pki, [{"url": runtime_url, "name": "r1"}],
                         {"old": {}, "rotating": {"expires": "30d"}})
    document = json.loads(site.keys_file.read_text())
    for entry in document["keys"]:
        if entry["id"] == "old":
            entry["expires"] = "2024-05-01T00:00:00Z"
    site.keys_file.write_text(json.dumps(document))
    with running_gateway(site):
        with site.http("old") as client:
            expired = client.post("/v1/chat/completions", json=CHAT)
        assert expired.status_code == 401 and expired.json()["error"]["code"] == "key_expired"
        assert "expired at 2024-05-01T00:00:00Z" in expired.json()["error"]["message"]
        old_secret = site.keys["rotating"]
        new_secret, _ = rotate_key(site.keyring, "rotating", grace="1h")
        site.publish_keys()
        for secret in (old_secret, new_secret):
            with site.openai(key=secret) as client:
                assert client.chat.completions.create(**CHAT).choices
        state = json.loads(subprocess.run([RUNTIME_COMMAND, "gateway-admin", "--socket", str(site.admin_socket),
                                           "keys", "--reload"], capture_output=True, text=True, check=True).stdout)
        assert state["sha256"] == hashlib.sha256(site.keys_file.read_bytes()).hexdigest()
        assert state["entries"] == 3 and state["error"] is None
    records = [json.loads(line) for path in sorted(site.audit_dir.glob("audit-*.jsonl"))
               for line in path.read_text().splitlines()]
    assert any(r.get("code") == "key_expired" and r["status"] == 401 for r in records)


def _metrics_port(site) -> int:
    import yaml

    return yaml.safe_load(site.config_path.read_text())["metrics"]["port"]


def _wait(condition, timeout_s: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)
