"""The monitoring role planned for the example fleet: Prometheus on the first gateway, scraping every
replica over mutual TLS, its own gateway and every node exporter; node exporters elsewhere behind TLS
with client certificates; nothing at all while monitoring is off."""

from __future__ import annotations

import pytest
import yaml

from deepfleet.inventoryfile import load_inventory
from deepfleet.paths import PROJECT_ROOT
from roles.bundle_contents import bundle_spec
from roles.defaults import DEFAULTS
from roles.monitoring import monitoring, monitoring_hosts

from .factplan import changed, find, load_case, plan, with_facts

INVENTORIES = PROJECT_ROOT / "inventories"
FLEET = INVENTORIES / "fleet.py"


@pytest.fixture
def facts():
    return with_facts(load_case("debian12-nogpu"), **{
        "server.Groups": [], "server.Users": {}, "files.Directory": {"*": None}, "files.File": {"*": None},
        "roles.facts.Sha256File": {"*": None}, "files.Sha1File": {"*": None},
        "deb.DebPackages": {}, "apt.AptSources": [], "systemd.SystemdStatus": {"*": {}}, "systemd.SystemdEnabled": {"*": {}},
    })


def _plan(facts, control_data, host_name, **data):
    return plan(facts, monitoring, data={**control_data, "monitoring_enabled": True, **data}, inventory=FLEET,
                host_name=host_name)


def _upload(ops, name, path):
    return find(ops, name).uploads()[path]


def test_off_by_default_plans_nothing(facts, control_data):
    assert plan(facts, monitoring, data=control_data, inventory=FLEET, host_name="gw1") == []


def test_the_first_gateway_monitors_when_there_is_no_monitoring_group():
    assert [h.name for h in monitoring_hosts(load_inventory(FLEET))] == ["gw1"]


def test_prometheus_on_gw1_scrapes_replicas_over_mtls_its_gateway_and_every_node_exporter(facts, control_data):
    ops = _plan(facts, control_data, "gw1")
    config = yaml.safe_load(_upload(ops, "Prometheus scrape config", "/etc/prometheus/prometheus.yml"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    runtime = jobs["deepfleet-runtime-tls"]
    assert runtime["scheme"] == "https"
    assert runtime["tls_config"]["cert_file"] == "/etc/prometheus/deepfleet-tls/client.crt"
    assert [(c["targets"], c["labels"]["instance"]) for c in runtime["static_configs"]] == [
        (["10.0.1.21:8000"], "gpu1"), (["10.0.1.22:8000"], "gpu2"), (["10.0.1.23:8000"], "gpu3"),
        (["10.0.1.24:8000"], "gpu4")]
    assert runtime["relabel_configs"] == [{"target_label": "job", "replacement": "deepfleet-runtime"}]
    assert [c["targets"] for c in jobs["deepfleet-gateway"]["static_configs"]] == [["127.0.0.1:9464"]]
    assert [c["targets"] for c in jobs["node"]["static_configs"]] == [["127.0.0.1:9100"]]
    assert [c["targets"] for c in jobs["node-tls"]["static_configs"]][:2] == [["10.0.0.12:9100"], ["10.0.1.21:9100"]]
    assert config["rule_files"] == ["/etc/prometheus/deepfleet-alerts.rules.yml"]
    args = _upload(ops, "Prometheus arguments", "/etc/default/prometheus")
    assert "--web.listen-address=127.0.0.1:9090" in args and "--storage.tsdb.retention.size=10GB" in args
    assert "--web.config.file" not in args  # loopback: no TLS needed
    steps = {op.name: " ".join(op.shell()) for op in ops}
    assert "install --no-install-recommends prometheus" in steps["deepfleet monitoring | Prometheus package"]
    names = changed(ops)
    # the config is on the host before the package's first start
    assert names.index("deepfleet monitoring | Prometheus scrape config") < names.index(
        "deepfleet monitoring | Prometheus package")


def test_a_gpu_node_runs_only_a_node_exporter_behind_tls_with_client_certificates(facts, control_data):
    ops = _plan(facts, control_data, "gpu1")
    assert not [name for name in changed(ops) if "Prometheus" in name]
    args = _upload(ops, "Node exporter arguments", "/etc/default/prometheus-node-exporter")
    assert "--web.listen-address=10.0.1.21:9100" in args
    web = yaml.safe_load(_upload(ops, "Node exporter web config", "/etc/prometheus/deepfleet-node-exporter-web.yml"))
    assert web["tls_server_config"]["client_auth_type"] == "RequireAndVerifyClientCert"


def test_prometheus_off_loopback_serves_tls_and_requires_client_certificates(facts, control_data):
    ops = _plan(facts, control_data, "gw1", monitoring_prometheus_listen_address="10.0.0.11",
                monitoring_prometheus_sources=["10.0.9.0/24"])
    assert "--web.config.file=/etc/prometheus/deepfleet-web.yml" in _upload(ops, "Prometheus arguments",
                                                                           "/etc/default/prometheus")
    web = yaml.safe_load(_upload(ops, "Prometheus web config", "/etc/prometheus/deepfleet-web.yml"))
    assert web["tls_server_config"]["min_version"] == "TLS13"


def test_the_bundle_carries_the_monitoring_packages():
    hosts = [("gw1", {**DEFAULTS, "bundle_host_os": "debian-12", "monitoring_enabled": True})]
    (target,) = bundle_spec(hosts).os_targets
    assert {"prometheus", "prometheus-node-exporter"} <= set(target.packages)


def test_the_firewall_admits_a_node_exporter_only_from_the_monitoring_host(facts, control_data):
    from roles.firewall import firewall

    data = {**control_data, "monitoring_enabled": True, "firewall_enabled": True,
            "firewall_ssh_sources": ["10.0.0.0/16"], "firewall_gateway_sources": ["10.0.0.0/16"]}
    ops = plan(with_facts(facts, **{"deb.DebPackages": {"nftables": ["1.0.6"]}}), firewall, data=data,
               inventory=FLEET, host_name="gpu1")
    ruleset = _upload(ops, "Firewall ruleset", "/etc/deepfleet/firewall.nft")
    assert "tcp dport 9100 ip saddr @node_exporter_v4 accept" in ruleset
    assert "elements = { 10.0.0.11/32 }" in ruleset


def test_the_rendered_config_passes_promtool(facts, control_data, tmp_path):
    """promtool check config on gw1's scrape config (host paths pointed at local stand-ins)."""
    import subprocess

    from roles.monitoring import RULES, TLS_DIR
    from tests.monitoring.conftest import debian_binary

    text = _upload(_plan(facts, control_data, "gw1"), "Prometheus scrape config", "/etc/prometheus/prometheus.yml")
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("stand-in")
    text = text.replace(TLS_DIR, str(tmp_path)).replace("/etc/prometheus/deepfleet-alerts.rules.yml", str(RULES))
    (tmp_path / "prometheus.yml").write_text(text)
    result = subprocess.run([str(debian_binary("prometheus", "promtool")), "check", "config",
                             str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
