"""The Grafana dashboards: well-formed, importable by hand (a datasource variable, no fixed data
source), and every panel queries only series that the runtime, the gateway, the node exporter (the
real one, from Debian's package) or Prometheus itself export. The alert rules are held to the same."""

from __future__ import annotations

import contextlib
import subprocess
import time

import httpx
import pynvml
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deepfleet.pki import ensure_server_cert, init_ca
from deepfleet_runtime.config import GpuHealthSection
from deepfleet_runtime.engines.base import EngineStats
from deepfleet_runtime.gateway.app import Gateway
from deepfleet_runtime.gateway.config import load_gateway_config
from deepfleet_runtime.gpuhealth import GpuHealth
from deepfleet_runtime.metrics import RuntimeMetrics
from tests.conftest import free_port
from tests.runtime.fake_nvml import FakeGpu, FakeNvml

from .dashboards import dashboards, panel_queries, series_names
from .test_alerts import RULES

PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
VLLM_PASSTHROUGH = "vllm:"  # vLLM's own series, passed through by the runtime with engine vllm (issue 12)


class _Engine:
    ready = True

    def stats(self):
        return EngineStats(waiting=1, running=2, kv_cache_used_tokens=5, kv_cache_capacity_tokens=10, weight_bytes=7)


def _sample_names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def _runtime_series() -> set[str]:
    nvml = FakeNvml([FakeGpu(retired={"single_bit": 0, "double_bit": 0, "pending": False})])
    health = GpuHealth(nvml, GpuHealthSection())
    health.check()
    metrics = RuntimeMetrics(_Engine(), nvml=nvml, gpu_health=health)
    metrics.requests.labels("chat", "200").inc()
    return _sample_names(metrics.render().decode())


def _gateway_series(tmp_path) -> set[str]:
    init_ca(tmp_path / "pki")
    server, _ = ensure_server_cert(tmp_path / "pki", "gw", ["localhost"])
    (tmp_path / "keys.json").write_text('{"keys": []}')
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": free_port()}, "tls": {"cert": str(server.cert), "key": str(server.key)},
        "api_keys_file": str(tmp_path / "keys.json"), "upstreams": [{"url": "http://127.0.0.1:9", "name": "r1"}],
        "audit": {"dir": str(tmp_path / "audit")}, "admin_socket": str(tmp_path / "admin.sock")}))
    gateway = Gateway(load_gateway_config(tmp_path / "gateway.yaml"))
    try:
        gateway.metrics.requests.inc("/v1/chat/completions", "200", "k1")
        gateway.metrics.latency.observe(0.1, "/v1/chat/completions")
        gateway.metrics.tokens.inc("k1", "prompt", amount=3)
        gateway.metrics.queue_wait.observe(0.0)
        return _sample_names(gateway.metrics.render())
    finally:
        gateway.audit.close()


@contextlib.contextmanager
def _running(command: list[str], url: str):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                yield httpx.get(url, timeout=5).text
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, node_exporter) -> set[str]:
    port = free_port()
    with _running([str(node_exporter), f"--web.listen-address=127.0.0.1:{port}"],
                  f"http://127.0.0.1:{port}/metrics") as text:
        node = _sample_names(text)
    return _runtime_series() | _gateway_series(tmp_path_factory.mktemp("gw")) | node | PROMETHEUS_OWN


def test_four_dashboards_each_importable_with_a_datasource_variable():
    boards = dashboards()
    assert set(boards) == {"fleet-overview", "engine", "gateway-keys", "gpus"}
    assert len({board["uid"] for board in boards.values()}) == 4
    for stem, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (stem, panel["title"])
            assert panel["targets"], (stem, panel["title"])


def test_every_panel_queries_only_exported_series(exported):
    missing = {(stem, title, name) for stem, title, expr in panel_queries()
               for name in series_names(expr) if name not in exported}
    assert missing == set()


def test_every_alert_rule_uses_only_exported_series(exported):
    groups = yaml.safe_load(RULES.read_text())["groups"]
    missing = {(rule["alert"], name) for group in groups for rule in group["rules"]
               for name in series_names(rule["expr"]) if name not in exported and not name.startswith(VLLM_PASSTHROUGH)}
    assert missing == set()


def test_the_series_check_can_fail():
    assert series_names('sum by (key) (rate(deepfleet_gateway_requests_totl{key=~"$key"}[5m]))') == {
        "deepfleet_gateway_requests_totl"}
    assert series_names("histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m]))) / on (x) b") == {"a_bucket", "b"}
