"""The monitoring role: Prometheus from the OS's packages on the monitoring hosts, a node exporter on
every host, alert rules from monitoring/alerts.rules.yml. Off unless `monitoring_enabled`.

Monitoring hosts: the inventory's `monitoring` group, else the first gateway. Each scrapes every
runtime replica (on loopback, or over mutual TLS at the replica's URL, as gateways reach it), its
own gateway's loopback metrics listener, and every node exporter (loopback on the monitoring host
itself, else TLS with client certificates from the internal CA on runtime_address). A gateway's
metrics listener is loopback-only (gateway config rule), so a gateway on another host is seen only
by a Prometheus on that host: put every gateway in `monitoring` to see them all. Prometheus listens
on loopback unless monitoring_prometheus_listen_address says otherwise; then it serves TLS and
requires a client certificate, and the firewall admits monitoring_prometheus_sources only.

Config files and the `prometheus` system user are in place before the packages are installed, so
the packages' own first start already uses them (apt keeps existing conffiles: --force-confold).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

import yaml
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.host import Host
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from deepfleet.paths import PROJECT_ROOT
from deepfleet.pki import ca_paths, ensure_client_cert, ensure_server_cert

from .common import RoleError, control_path, template
from .defaults import DEFAULTS
from .tls import server_names
from .topology import gateway_hosts, replica_url, replicas, runs_gateway, runtime_address, setting
from .transfer import secret_file

MONITORING = "monitoring"
RULES = PROJECT_ROOT / "monitoring" / "alerts.rules.yml"
PROMETHEUS_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
PROMETHEUS_PACKAGES = ["prometheus"]
NODE_EXPORTER_PACKAGES = ["prometheus-node-exporter"]
CONFIG_DIR = "/etc/prometheus"
TLS_DIR = f"{CONFIG_DIR}/deepfleet-tls"  # root:prometheus 0750: the CA, this host's certificates
LOOPBACK = ("127.0.0.1", "::1", "localhost")
STORAGE_DIR = "/var/lib/prometheus/metrics2"  # Debian's; retention keeps it within monitoring_retention_size


def monitoring_hosts(inventory) -> list[Host]:
    """Hosts that run Prometheus: the `monitoring` group, else the first gateway host."""
    members = inventory.get_group(MONITORING, default=None)
    if members:
        return list(members)
    gateways = gateway_hosts(inventory)
    return gateways[:1]


def runs_prometheus(node: Host) -> bool:
    return node.name in {other.name for other in monitoring_hosts(node.inventory)}


def node_exporter_is_remote(node: Host) -> bool:
    """Scraped from another host (then it serves TLS with client certificates on runtime_address)."""
    return any(other.name != node.name for other in monitoring_hosts(node.inventory))


def prometheus_is_remote(node: Host, settings: Mapping) -> bool:
    """`node` runs Prometheus and serves it off loopback (TLS, monitoring_prometheus_sources)."""
    return bool(settings["monitoring_enabled"]) and runs_prometheus(node) and _prometheus_serves_tls(settings)


def node_exporter_address(node: Host) -> str:
    port = setting(node, "monitoring_node_exporter_port")
    return f"{runtime_address(node)}:{port}" if node_exporter_is_remote(node) else f"127.0.0.1:{port}"


def scrape_jobs(monitor: Host) -> list[dict]:
    """The scrape configs of `monitor`'s Prometheus: [{name, job, scheme, targets: [(address, instance)]}].
    `job` is the job label every target gets (http and https targets of one kind share it)."""
    jobs: dict[tuple[str, str], list] = {}
    for replica in replicas(monitor.inventory):
        scheme, address = replica_url(replica).split("://", 1)
        jobs.setdefault(("deepfleet-runtime", scheme), []).append((address, replica.name))
    if runs_gateway(monitor):
        port = setting(monitor, "gateway_metrics_port")
        jobs.setdefault(("deepfleet-gateway", "http"), []).append((f"127.0.0.1:{port}", monitor.name))
    for node in monitor.inventory:
        scheme = "https" if node.name != monitor.name and node_exporter_is_remote(node) else "http"
        address = node_exporter_address(node) if scheme == "https" else \
            f"127.0.0.1:{setting(node, 'monitoring_node_exporter_port')}"
        jobs.setdefault(("node", scheme), []).append((address, node.name))
    return [{"name": job if scheme == "http" else f"{job}-tls", "job": job, "scheme": scheme, "targets": targets}
            for (job, scheme), targets in jobs.items()]


def prometheus_args(settings: Mapping) -> str:
    """ARGS for the package's unit (/etc/default/prometheus): listen address, retention, web config."""
    address = settings["monitoring_prometheus_listen_address"]
    host_part = f"[{address}]" if ":" in address else address
    args = [f"--config.file={CONFIG_DIR}/prometheus.yml", f"--storage.tsdb.path={STORAGE_DIR}",
            f"--web.listen-address={host_part}:{settings['monitoring_prometheus_port']}",
            f"--storage.tsdb.retention.time={settings['monitoring_retention_time']}",
            f"--storage.tsdb.retention.size={settings['monitoring_retention_size']}"]
    if address not in LOOPBACK:
        args.append(f"--web.config.file={CONFIG_DIR}/deepfleet-web.yml")
    return " ".join(args)


def node_exporter_args(node: Host) -> str:
    args = [f"--web.listen-address={node_exporter_address(node)}"]
    if node_exporter_is_remote(node):
        args.append(f"--web.config.file={CONFIG_DIR}/deepfleet-node-exporter-web.yml")
    return " ".join(args)


def web_config() -> str:
    """exporter-toolkit web config: TLS 1.3 with this host's server certificate, client certificates
    from the internal CA required (Prometheus and the node exporter read the same format)."""
    return (f"tls_server_config:\n  cert_file: {TLS_DIR}/server.crt\n  key_file: {TLS_DIR}/server.key\n"
            f"  client_ca_file: {TLS_DIR}/ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
            "  min_version: TLS13\n")


@deploy("deepfleet monitoring", data_defaults=DEFAULTS)
def monitoring():
    """Node exporter on every host; Prometheus with the fleet's scrape config and alert rules on the
    monitoring hosts; restarted only when their config changed."""
    data = host.data
    if not data.monitoring_enabled:
        return
    settings = {key: data.get(key) for key in [*DEFAULTS, "ssh_hostname"]}
    prometheus = runs_prometheus(host)
    server.group(name="prometheus group", group="prometheus", system=True)
    server.user(name="prometheus user (the packages' service account)", user="prometheus", group="prometheus",
                system=True, home="/var/lib/prometheus", shell="/usr/sbin/nologin")
    files.directory(name="Config directory /etc/prometheus", path=CONFIG_DIR, user="root", group="root", mode="0755")
    jobs = scrape_jobs(host) if prometheus else []
    serves_tls = node_exporter_is_remote(host) or (prometheus and _prometheus_serves_tls(settings))
    tls = _tls_files(settings, server_pair=serves_tls, client_pair=any(job["scheme"] == "https" for job in jobs))

    exporter_inputs = list(tls)
    if node_exporter_is_remote(host):
        exporter_inputs.append(files.put(name="Node exporter web config (TLS, client certificates)",
                                         src=io.StringIO(web_config()),
                                         dest=f"{CONFIG_DIR}/deepfleet-node-exporter-web.yml", mode="0644"))
    exporter_inputs.append(files.put(name="Node exporter arguments",
                                     src=io.StringIO(f'ARGS="{node_exporter_args(host)}"\n'),
                                     dest="/etc/default/prometheus-node-exporter", mode="0644"))
    exporter_package = apt.packages(name="Node exporter package", packages=NODE_EXPORTER_PACKAGES, update=True,
                                    cache_time=3600, extra_install_args="--no-install-recommends")
    _running("prometheus-node-exporter", [exporter_package, *exporter_inputs])
    if not prometheus:
        return

    inputs = list(tls)
    if _prometheus_serves_tls(settings):
        inputs.append(files.put(name="Prometheus web config (TLS, client certificates)",
                                src=io.StringIO(web_config()), dest=f"{CONFIG_DIR}/deepfleet-web.yml", mode="0644"))
    inputs.append(files.put(name="Prometheus arguments", src=io.StringIO(f'ARGS="{prometheus_args(settings)}"\n'),
                            dest="/etc/default/prometheus", mode="0644"))
    inputs.append(files.put(name="Alert rules", src=io.StringIO(alert_rules(settings["monitoring_alert_for"])),
                            dest=f"{CONFIG_DIR}/deepfleet-alerts.rules.yml", mode="0644"))
    inputs.append(files.template(name="Prometheus scrape config", src=template("prometheus.yml.j2"),
                                 dest=f"{CONFIG_DIR}/prometheus.yml", mode="0644", jobs=jobs,
                                 tls_dir=TLS_DIR, settings=settings))
    package = apt.packages(name="Prometheus package", packages=PROMETHEUS_PACKAGES, update=True, cache_time=3600,
                           extra_install_args="--no-install-recommends")
    server.shell(name="Check the Prometheus config and rules (promtool)",
                 commands=[f"promtool check config {CONFIG_DIR}/prometheus.yml"], _if=any_changed(package, *inputs))
    _running("prometheus", [package, *inputs])


def alert_rules(alert_for: Mapping[str, str]) -> str:
    """monitoring/alerts.rules.yml with the `for` of each alert named in `alert_for` replaced
    (`monitoring_alert_for`); the shipped file unchanged when it names none."""
    if not alert_for:
        return RULES.read_text()
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    unknown = sorted(set(alert_for) - set(alerts))
    if unknown:
        raise RoleError(f"monitoring_alert_for names alerts that monitoring/alerts.rules.yml does not have: "
                        f"{', '.join(unknown)}; known: {', '.join(sorted(alerts))}")
    for name, duration in alert_for.items():
        if not isinstance(duration, str) or not PROMETHEUS_DURATION.fullmatch(duration):
            raise RoleError(f"monitoring_alert_for: {name}: {duration!r} is not a Prometheus duration "
                            f"(e.g. 30s, 5m, 1h)")
        alerts[name]["for"] = duration
    return yaml.safe_dump(rules, sort_keys=False, allow_unicode=True, width=1000)


def _prometheus_serves_tls(settings: Mapping) -> bool:
    return settings["monitoring_prometheus_listen_address"] not in LOOPBACK


def _running(service: str, inputs: list) -> None:
    systemd.service(name=f"Enable and start {service}", service=f"{service}.service", running=True, enabled=True)
    systemd.service(name=f"Restart {service} for new config", service=f"{service}.service", restarted=True,
                    _if=any_changed(*inputs))


def _tls_files(settings: Mapping, server_pair: bool, client_pair: bool) -> list:
    """The CA and this host's certificates, readable by the prometheus group only."""
    if not server_pair and not client_pair:
        return []
    pki_dir = control_path(settings["gateway_pki_dir"], "gateway_pki_dir")
    files.directory(name="Monitoring TLS directory", path=TLS_DIR, user="root", group="prometheus", mode="0750")
    ops = [files.put(name="Monitoring: internal CA certificate", src=str(ca_paths(pki_dir).cert),
                     dest=f"{TLS_DIR}/ca.crt", user="root", group="prometheus", mode="0644")]
    pairs = []
    if server_pair:
        pairs.append(("server", ensure_server_cert(pki_dir, host.name, server_names(settings, host.name, runs_gateway(host)))[0]))
    if client_pair:
        pairs.append(("client", ensure_client_cert(pki_dir, host.name)[0]))
    for kind, pair in pairs:
        ops.append(files.put(name=f"Monitoring: TLS {kind} certificate", src=str(pair.cert),
                             dest=f"{TLS_DIR}/{kind}.crt", user="root", group="prometheus", mode="0644"))
        ops.append(secret_file(name=f"Monitoring: TLS {kind} key", src=str(Path(pair.key)),
                               dest=f"{TLS_DIR}/{kind}.key", user="root", group="prometheus", mode="0640"))
    return ops
