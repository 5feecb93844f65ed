"""The monitoring role on a real test host: Debian's own Prometheus and node exporter, scraping the
host's real gateway and runtime; every dashboard panel's query returns data from Prometheus's API,
and the alerts whose conditions can exist here are provoked for real: the replica stopped (down,
out of rotation, and a burst of 5xx through the gateway), a certificate that expires in 10 days,
and the audit log's filesystem filled up (a small tmpfs mounted over the audit directory: the
gateway's failed audit writes fire DeepfleetAuditWriteFailures); each of these alerts fires.

GPU panels and alerts need NVML and a GPU: they are proved by promtool's unit tests and the fake
NVML (tests/monitoring, tests/runtime/test_gpuhealth.py)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deepfleet.paths import PROJECT_ROOT
from roles.defaults import DEFAULTS
from roles.gateway import audit_dir
from tests.conftest import free_port
from tests.monitoring.dashboards import grafana_query, panel_queries

pytestmark = pytest.mark.fleet

RUNTIME = "/opt/deepfleet/venv/bin/deepfleet-runtime"
AUDIT_DIR = audit_dir(DEFAULTS)  # where the gateway role puts the audit log by default
SERVER_CERT = "/etc/deepfleet/tls/server.crt"
CHAT = {"model": "tiny-deepseek-v3", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
VARIABLES = {"instance": ".*", "key": ".*"}
NEEDS_A_GPU = "gpus"  # the GPU dashboard: NVML series, absent without a GPU
# the alerts whose shipped `for` (2, 5 and 10 minutes; promtool's unit tests hold them to it) is longer
# than a test should wait: shortened through monitoring_alert_for, so they fire here on their real expr
SHORT_FOR = {"DeepfleetKeyServerErrors": "5s", "DeepfleetAuditDiskNearlyFull": "5s",
             "DeepfleetCertificateExpiresSoon": "5s"}


@pytest.fixture(scope="module")
def prometheus(site, tmp_path_factory):
    """The site with monitoring_enabled (scraping every second); the Prometheus API's base URL."""
    port = free_port()
    inventory = site.with_overrides(tmp_path_factory.mktemp("monitoring") / "inventory.json",
                                    monitoring_enabled=True, monitoring_prometheus_port=port,
                                    monitoring_node_exporter_port=free_port(), monitoring_scrape_interval="1s",
                                    monitoring_evaluation_interval="1s", monitoring_alert_for=SHORT_FOR)
    started = time.monotonic()
    result = site.deploy(inventory)
    assert not result.failed_hosts, result.log[-3000:]
    print(f"monitoring deploy: {time.monotonic() - started:.1f} s")
    again = site.deploy(inventory)
    assert again.changed == 0, again.changed_operations
    return f"http://127.0.0.1:{port}/api/v1"


def _get(url: str, **params):
    answer = httpx.get(url, params=params, timeout=30).json()
    assert answer["status"] == "success", answer
    return answer["data"]


def _wait(what, condition, timeout: float = 120, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def _status(site) -> dict:
    """`deepfleet status --json` of the site's one host."""
    env = {**os.environ, "DEEPFLEET_HOSTS_FILE": str(site.inventory)}
    command = [str(Path(sys.executable).parent / "deepfleet"), "status", "--json", "inventories/local.py"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    (line,) = result.stdout.splitlines()
    return json.loads(line)


def _wait_for_the_gateway(site) -> None:
    def healthy():
        try:
            return _chat(site) < 600
        except httpx.TransportError:
            return False
    try:
        _wait("the gateway", healthy, timeout=60)
    except AssertionError:
        raise AssertionError(site.on_host("journalctl -u deepfleet-gateway -n 30 --no-pager", check=False)) from None


def _chat(site) -> int:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(site.ca_cert)), timeout=30) as client:
        return client.post(f"{site.base_url}/chat/completions", json=CHAT,
                           headers={"Authorization": f"Bearer {site.api_key}"}).status_code


def test_targets_are_the_hosts_loopback_runtime_gateway_and_node_exporter(site, prometheus):
    def all_up():
        targets = _get(f"{prometheus}/targets")["activeTargets"]
        return targets if len(targets) == 3 and all(t["health"] == "up" for t in targets) else None

    targets = _wait("every target up", all_up, timeout=60)
    assert sorted(t["labels"]["job"] for t in targets) == ["deepfleet-gateway", "deepfleet-runtime", "node"]
    assert {t["labels"]["instance"] for t in targets} == {"h1"}
    assert all(t["scrapeUrl"].startswith("http://127.0.0.1:") for t in targets)
    flags = _get(f"{prometheus}/status/flags")
    # Prometheus counts GB in powers of two and says so
    assert (flags["storage.tsdb.retention.time"], flags["storage.tsdb.retention.size"]) == ("15d", "10GiB")
    assert flags["web.listen-address"].startswith("127.0.0.1:")
    loaded = _get(f"{prometheus}/rules")["groups"]
    shipped = yaml.safe_load((PROJECT_ROOT / "monitoring" / "alerts.rules.yml").read_text())["groups"]
    assert sorted(rule["name"] for group in loaded for rule in group["rules"]) == \
        sorted(rule["alert"] for group in shipped for rule in group["rules"])  # every rule we ship, loaded


def test_every_panel_query_returns_data(site, prometheus):
    for _ in range(3):
        assert _chat(site) == 200
        time.sleep(1.5)
    queries = [(stem, title, grafana_query(expr, VARIABLES)) for stem, title, expr in panel_queries()
               if stem != NEEDS_A_GPU]

    def empty():
        return [(stem, title) for stem, title, query in queries
                if not _get(f"{prometheus}/query", query=query)["result"]]

    deadline = time.monotonic() + 30  # rate() needs two scrapes of each series
    while (missing := empty()) and time.monotonic() < deadline:
        time.sleep(2)
    assert missing == []


def test_status_shows_ready_load_and_kv_use(site, prometheus):
    record = _status(site)
    runtime = record["runtime"]
    assert record["healthy"] and runtime["ready"] and runtime["why_not"] == ""
    assert runtime["requests_per_s"] is not None and runtime["tokens_per_s"] is not None
    assert runtime["queue"] == 0 and 0 <= runtime["kv_use"] <= 1 and runtime["gpus"] == []


def _short_lived_cert() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "h1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=80))
            .not_valid_after(now + timedelta(days=10)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _on_host(site, command: str) -> str:
    result = subprocess.run(["docker", "exec", site.host.container, "sh", "-c", command], capture_output=True,
                            text=True)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def _alerts(prometheus) -> dict[str, str]:
    """{alert name: state} of the alerts now pending or firing."""
    return {alert["labels"]["alertname"]: alert["state"] for alert in _get(f"{prometheus}/alerts")["alerts"]}


def test_alerts_fire_for_a_stopped_replica_5xx_an_expiring_cert_and_a_full_audit_disk(site, prometheus):
    original_cert = site.on_host(f"cat {SERVER_CERT}")
    try:
        # the audit directory's filesystem full: a 256 KiB tmpfs over it, then filled. The gateway has a
        # mount namespace of its own (ProtectSystem=strict) and a test host's mounts do not propagate, so
        # it is restarted onto the tmpfs, which it then shares with the host
        _on_host(site, f"owner=$(stat -c %u:%g {AUDIT_DIR}) && "
                       f"mount -t tmpfs -o size=256k,mode=0750 deepfleet-test-full {AUDIT_DIR} && "
                       f"chown $owner {AUDIT_DIR} && systemctl restart deepfleet-gateway")
        _wait_for_the_gateway(site)
        # the certificate file the gateway presents (read at each scrape), replaced by one that expires in 10 days
        subprocess.run(["docker", "exec", "-i", site.host.container, "sh", "-c", f"cat > {SERVER_CERT}"],
                       input=_short_lived_cert(), check=True)
        _on_host(site, f"dd if=/dev/zero of={AUDIT_DIR}/fill bs=4k 2>/dev/null; true")
        site.on_host("systemctl stop deepfleet-runtime")
        statuses = []
        for _ in range(10):  # spread over several scrapes, so rate() sees the 5xx counter grow
            statuses.append(_chat(site))
            time.sleep(0.7)
        assert all(status >= 500 for status in statuses), statuses

        wanted = {"DeepfleetReplicaDown", "DeepfleetReplicaOutOfRotation", "DeepfleetAuditWriteFailures",
                  "DeepfleetKeyServerErrors", "DeepfleetCertificateExpiresSoon", "DeepfleetAuditDiskNearlyFull"}

        for condition in ('up{job="deepfleet-runtime"} == 0',
                          "deepfleet_gateway_audit_disk_free_bytes / deepfleet_gateway_audit_disk_size_bytes < 0.1",
                          "deepfleet_certificate_expiry_timestamp_seconds - time() < 21 * 86400",
                          'sum(rate(deepfleet_gateway_requests_total{status=~"5.."}[5m])) > 0',
                          "increase(deepfleet_gateway_audit_write_failures_total[5m]) > 0"):
            _wait(condition, lambda: _get(f"{prometheus}/query", query=condition)["result"], timeout=30)
        seen = {}

        def reached():
            seen.update(alerts=_alerts(prometheus))
            alerts = seen["alerts"]
            return alerts if all(alerts.get(name) == "firing" for name in wanted) else None

        try:
            alerts = _wait("the alerts", reached, timeout=150, every=2)
        except AssertionError:
            raise AssertionError(f"wanted {sorted(wanted)} firing, Prometheus has {seen.get('alerts')}") from None
        assert "DeepfleetGatewayDown" not in alerts
        stopped = _status(site)
        assert not stopped["healthy"] and not stopped["runtime"]["ready"]
        assert "not answering" in stopped["runtime"]["why_not"]
    finally:
        site.on_host(f"umount {AUDIT_DIR} && systemctl restart deepfleet-gateway", check=False)
        subprocess.run(["docker", "exec", "-i", site.host.container, "sh", "-c", f"cat > {SERVER_CERT}"],
                       input=original_cert.encode(), check=True)
        site.on_host("systemctl start deepfleet-runtime")
        site.on_host(f"{RUNTIME} wait-ready http://127.0.0.1:{site.host.ports['runtime_port']}/ready --timeout 180")
    _wait("the gateway routing again", lambda: _chat(site) == 200, timeout=60, every=1)
    _wait("DeepfleetReplicaDown resolved", lambda: "DeepfleetReplicaDown" not in _alerts(prometheus), timeout=30)
