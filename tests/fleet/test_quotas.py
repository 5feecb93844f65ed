"""Quotas that hold across a fleet, on real test hosts: h1 and h2 are gateways in front of one
replica (h1's runtime; h2 reaches it over mutual TLS), and h1 runs the fleet's limits store (the
OS's redis-server, TLS + password, deployed by roles/limits_store.py). Under concurrent load from
the openai SDK a key gets its requests per minute once, not once per gateway; a daily budget
survives restarts of a gateway and of the store; `deepfleet keys revoke NAME INVENTORY` has both
gateways refuse the key within seconds; the store stopped mid-test leaves each gateway serving its
half of every limit, saying so in /ready and its metrics, until it is back; `deepfleet keys usage`
counts all of it from the gateways' audit logs. One fleet for all, two hosts (CI time).
"""

from __future__ import annotations

import csv
import io
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from deepfleet import testhosts
from deepfleet.apikeys import create_key
from deepfleet.demo import MODEL_NAME, PORT_SETTINGS, write_local_inventory
from deepfleet.deployrun import run_deploy
from deepfleet.modelkeys import create_model_keys
from deepfleet.paths import LOCAL_INVENTORY, PROJECT_ROOT, cache_dir
from deepfleet.pki import init_ca

pytestmark = pytest.mark.fleet
GROUPS = {"gateways": ["h1", "h2"], "gpu_nodes": ["h1"]}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
KEYS = {"paced": {"rpm": 5, "tpm": 0, "concurrency": 0}, "outage": {"rpm": 4, "tpm": 0, "concurrency": 0},
        "daily": {"rpm": 0, "tpm": 0, "concurrency": 0, "tokens_per_day": 60}, "doomed": {}}


class QuotaFleet:
    def __init__(self, hosts: testhosts.TestFleet, root: Path, ca_cert: Path, keys: dict[str, str]):
        self.hosts, self.root, self.ca_cert, self.keys = hosts, root, ca_cert, keys
        self.inventory = root / "inventory.json"
        self.timings: dict[str, float] = {}

    def host(self, name: str) -> testhosts.TestHost:
        return next(h for h in self.hosts.hosts if h.name == name)

    def on(self, name: str, command: str) -> str:
        return subprocess.run(["docker", "exec", self.host(name).container, "sh", "-c", command],
                              capture_output=True, text=True, check=True).stdout

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.host(name).ports['gateway_port']}"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def client(self, gateway: str, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url(gateway)}/v1", api_key=self.keys[key], max_retries=0, timeout=60,
                             http_client=openai.DefaultHttpxClient(verify=self.tls()))

    def ready(self, gateway: str) -> dict:
        return httpx.get(f"{self.url(gateway)}/ready", verify=self.tls(), timeout=10).json()

    def metrics(self, gateway: str) -> str:
        return httpx.get(f"http://127.0.0.1:{self.host(gateway).ports['gateway_metrics_port']}/metrics").text

    def deepfleet(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "DEEPFLEET_HOSTS_FILE": str(self.inventory), "DEEPFLEET_HOME": str(self.root / "state"),
               "DEEPFLEET_CACHE": str(cache_dir())}
        return subprocess.run([str(Path(sys.executable).parent / "deepfleet"), *args], capture_output=True,
                              text=True, env=env, timeout=600, cwd=PROJECT_ROOT)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("quotas")
    image = testhosts.ensure_image(cache_dir() / "testhost")
    hosts = testhosts.TestFleet(root / "hosts")
    fleet = None
    try:
        hosts.start(2, image, PORT_SETTINGS)
        ca, _ = init_ca(root / "pki")
        keys = {name: create_key(root / "keys.json", name, **limits) for name, limits in KEYS.items()}
        create_model_keys(root / "model-keys")
        fleet = QuotaFleet(hosts, root, ca.cert, keys)
        write_local_inventory(fleet.inventory, hosts, tiny_model_dir, root / "pki", root / "keys.json", groups=GROUPS,
                              model_keys_dir=str(root / "model-keys"))
        started = time.monotonic()
        first = run_deploy(LOCAL_INVENTORY, env={"DEEPFLEET_HOSTS_FILE": str(fleet.inventory)}, echo=False)
        fleet.timings["first_deploy_2_hosts_s"] = round(time.monotonic() - started, 1)
        assert first.failed_hosts == []
        yield fleet
    finally:
        print(f"\nquota fleet timings: {json.dumps(fleet.timings) if fleet else '-'}")
        hosts.destroy()


def _load(fleet: QuotaFleet, key: str, per_client: int) -> list[str]:
    """Four openai clients per gateway at once, `per_client` completions each: "ok" or the error code."""
    outcomes, lock = [], threading.Lock()

    def ask(gateway: str) -> None:
        with fleet.client(gateway, key) as client:
            for _ in range(per_client):
                try:
                    client.chat.completions.create(**CHAT)
                    outcome = "ok"
                except openai.APIStatusError as exc:
                    outcome = f"{exc.status_code} {exc.code}"
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=ask, args=(gateway,)) for gateway in ("h1", "h2") * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return outcomes


def test_the_store_runs_on_h1_secured_and_both_gateways_share_it(fleet):
    store_port = fleet.host("h1").ports["gateway_limits_store_port"]
    listening = fleet.on("h1", f"ss -Hltn 'sport = :{store_port}'")
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{store_port}"]
    config = fleet.on("h1", "cat /etc/deepfleet-limits-store/store.conf")
    assert "port 0\n" in config and "appendonly yes" in config and "requirepass" not in config
    assert fleet.on("h1", "stat -c '%U:%G %a' /etc/deepfleet-limits-store/password.conf").strip() == "root:redis 640"
    plain = subprocess.run(["docker", "exec", fleet.host("h1").container, "redis-cli", "-p", str(store_port), "ping"],
                           capture_output=True, text=True)
    assert "PONG" not in plain.stdout  # no plaintext, no password: nothing
    for gateway in ("h1", "h2"):
        assert fleet.ready(gateway)["limits"]["store"] == "ok"


def test_a_key_gets_its_requests_per_minute_once_across_both_gateways_under_load(fleet):
    started = time.monotonic()
    outcomes = _load(fleet, "paced", 4)
    fleet.timings["rpm_load_s"] = round(time.monotonic() - started, 1)
    accepted = outcomes.count("ok")
    assert len(outcomes) == 32 and 5 <= accepted <= 6, outcomes  # N = 5, +1 for a refill during the test
    assert set(outcomes) == {"ok", "429 rate_limit_exceeded"}


def test_a_daily_budget_survives_restarts_of_a_gateway_and_of_the_store(fleet):
    used = 0
    with fleet.client("h2", "daily") as client:
        for _ in range(30):
            try:
                used += client.chat.completions.create(**CHAT).usage.total_tokens
            except openai.RateLimitError as exc:
                assert exc.code == "insufficient_quota" and int(exc.response.headers["retry-after"]) >= 1
                break
        else:
            pytest.fail("the budget of 60 tokens per day was never reached")
    assert used >= 60
    started = time.monotonic()
    fleet.on("h2", "systemctl restart deepfleet-gateway")
    fleet.on("h1", "systemctl restart deepfleet-limits-store")  # its append-only file keeps the count
    _wait(lambda: _answers(fleet, "h2", "daily") != 0, 60)
    fleet.timings["restarts_s"] = round(time.monotonic() - started, 1)
    for gateway in ("h1", "h2"):
        assert _answers(fleet, gateway, "daily") == "insufficient_quota"


def test_a_revoked_key_is_refused_by_both_gateways_within_5_s_of_the_command(fleet):
    refused_at, stop = {}, threading.Event()

    def poll(gateway: str) -> None:
        with httpx.Client(base_url=fleet.url(gateway), verify=fleet.tls(), timeout=30,
                          headers={"Authorization": f"Bearer {fleet.keys['doomed']}"}) as client:
            while not stop.is_set():
                if client.post("/v1/chat/completions", json=CHAT).status_code == 401:
                    refused_at.setdefault(gateway, time.monotonic())
                    return
                time.sleep(0.1)

    for gateway in ("h1", "h2"):
        assert _answers(fleet, gateway, "doomed") == "ok"
    pollers = [threading.Thread(target=poll, args=(gateway,)) for gateway in ("h1", "h2")]
    for poller in pollers:
        poller.start()
    started = time.monotonic()
    revoke = fleet.deepfleet("keys", "revoke", "doomed", str(LOCAL_INVENTORY))
    returned = time.monotonic()
    fleet.timings["revoke_command_s"] = round(returned - started, 1)
    time.sleep(5)
    stop.set()
    for poller in pollers:
        poller.join(timeout=60)
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr[-2000:]
    assert [line.split(":")[:2] for line in revoke.stdout.splitlines()[-2:]] == [["h1", " OK"], ["h2", " OK"]]
    assert set(refused_at) == {"h1", "h2"} and all(at - returned <= 5 for at in refused_at.values()), refused_at
    pushed = fleet.on("h2", "sha256sum /etc/deepfleet/api_keys.json; stat -c '%U:%G %a' /etc/deepfleet/api_keys.json")
    assert pushed.splitlines()[1] == "root:deepfleet-gateway 640"
    assert fleet.deepfleet("keys", "list", "--keyring", str(fleet.root / "keys.json")).stdout.count("revoked") == 1


def test_the_store_stopped_each_gateway_serves_its_half_says_so_and_recovers(fleet):
    fleet.on("h1", "systemctl stop deepfleet-limits-store")
    try:
        outcomes = _load(fleet, "outage", 2)
        assert outcomes.count("ok") == 4, outcomes  # 2 of 4 per gateway: never more, never none
        for gateway in ("h1", "h2"):
            ready = fleet.ready(gateway)
            assert ready["status"] == "ready" and ready["limits"]["store"] == "unreachable"
            assert ready["limits"]["local_fraction"] == 0.5
            metrics = fleet.metrics(gateway)
            assert "deepfleet_gateway_limits_store_up 0" in metrics
            assert "deepfleet_gateway_limits_local_admitted_total 2" in metrics
    finally:
        fleet.on("h1", "systemctl start deepfleet-limits-store")
    started = time.monotonic()
    for gateway in ("h1", "h2"):
        _wait(lambda gateway=gateway: fleet.ready(gateway)["limits"]["store"] == "ok", 30)
        assert "deepfleet_gateway_limits_store_up 1" in fleet.metrics(gateway)
    fleet.timings["store_recovery_s"] = round(time.monotonic() - started, 1)


def test_usage_from_the_audit_logs_counts_requests_tokens_and_refusals_by_key(fleet):
    usage = fleet.deepfleet("keys", "usage", str(LOCAL_INVENTORY), "--by", "key", "--csv")
    assert usage.returncode == 0, usage.stdout + usage.stderr[-2000:]
    text = usage.stdout[usage.stdout.index("key,requests"):]
    rows = {row["key"]: row for row in csv.DictReader(io.StringIO(text))}
    assert int(rows["paced"]["requests"]) == 32 and int(rows["paced"]["completion_tokens"]) > 0
    assert int(rows["paced"]["refused_rate_limit_exceeded"]) in (26, 27)  # 32 less the 5 (or 6) accepted
    assert int(rows["daily"]["refused_insufficient_quota"]) >= 3
    assert int(rows["daily"]["prompt_tokens"]) + int(rows["daily"]["completion_tokens"]) >= 60
    assert int(rows["doomed"]["requests"]) >= 2 and int(rows["outage"]["refused_rate_limit_exceeded"]) == 12
    assert int(rows["-"]["refused_invalid_api_key"]) >= 2  # the revoked key, refused by both gateways


def _answers(fleet: QuotaFleet, gateway: str, key: str):
    """"ok", the error code, or 0 when the gateway does not answer (restarting)."""
    try:
        with httpx.Client(base_url=fleet.url(gateway), verify=fleet.tls(), timeout=30,
                          headers={"Authorization": f"Bearer {fleet.keys[key]}"}) as client:
            response = client.post("/v1/chat/completions", json=CHAT)
    except httpx.TransportError:
        return 0
    return "ok" if response.status_code == 200 else response.json()["error"]["code"]


def _wait(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.25)
