"""firewalld (on by default on Rocky/RHEL): open the ports deepfleet serves, and nothing else.

The gateway port everywhere a gateway listens, the runtime port where gateways on other hosts
reach the runtime (mutual TLS), the node exporter's port where a Prometheus on another host
scrapes it and Prometheus's where it listens off loopback (roles/monitoring.py):
`firewall-cmd --permanent --add-port` for each port not open yet. A Ray node's peers reach every
port (roles/ray.py, ray_peers), and nobody else Ray's: each peer's address becomes a source of
firewalld's `trusted` zone (`--zone=trusted --add-source`). Then one `firewall-cmd --reload`.
Hosts without firewalld running are left alone (Debian/Ubuntu use the nftables role,
roles/firewall.py).

    FirewalldPorts   {"running": firewalld runs, "ports": ["22/tcp", ...] of the permanent config,
                      "trusted": the trusted zone's permanent sources}
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation


class FirewalldPorts(FactBase):
    """Whether firewalld runs, and the ports its permanent configuration opens."""

    def command(self) -> str:
        return ('echo "state=$(firewall-cmd --state 2>&1)"; '
                'echo "ports=$(firewall-cmd --permanent --list-ports 2>/dev/null)"; '
                'echo "trusted=$(firewall-cmd --permanent --zone=trusted --list-sources 2>/dev/null)"')

    @staticmethod
    def default() -> dict:
        return {"running": False, "ports": [], "trusted": []}

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {"running": values.get("state", "").strip() == "running", "ports": values.get("ports", "").split(),
                "trusted": values.get("trusted", "").split()}


def served_ports(settings: dict) -> list[str]:
    """The TCP ports this host serves to other machines, firewalld's way ("8443/tcp", "10002-10999/tcp")."""
    ports = [str(settings["gateway_port"])]
    if settings.get("runtime_remote"):
        ports.append(str(settings["runtime_port"]))
    if settings.get("node_exporter_sources"):  # scraped by Prometheus on another host (roles/monitoring.py)
        ports.append(str(settings["monitoring_node_exporter_port"]))
    if settings.get("prometheus_remote"):  # Prometheus off loopback, for Grafana & co.
        ports.append(str(settings["monitoring_prometheus_port"]))
    if settings.get("limits_store_sources"):  # the fleet's limits store, for the other gateways
        ports.append(str(settings["gateway_limits_store_port"]))
    return [f"{port}/tcp" for port in ports]


@operation()
def firewalld_open(ports: list[str], trusted_sources: list[str] | None = None):
    """
    Open `ports` in firewalld's permanent configuration (and trust `trusted_sources` on every port),
    then reload it, where firewalld runs.

    + ports: e.g. ["8443/tcp", "8000/tcp"]
    + trusted_sources: addresses admitted on every port (a Ray node's peers), e.g. ["10.0.2.22"]
    """
    state = host.get_fact(FirewalldPorts)
    if not state["running"]:
        host.noop("firewalld is not running")
        return
    missing = [port for port in ports if port not in state["ports"]]
    untrusted = [source for source in trusted_sources or [] if source not in state["trusted"]]
    if not missing and not untrusted:
        host.noop(f"firewalld admits {', '.join(ports)}" + (f" and trusts {', '.join(trusted_sources)}"
                                                            if trusted_sources else ""))
        return
    for port in missing:
        yield StringCommand("firewall-cmd", "--permanent", f"--add-port={port}")
    for source in untrusted:
        yield StringCommand("firewall-cmd", "--permanent", "--zone=trusted", f"--add-source={source}")
    yield StringCommand("firewall-cmd", "--reload")
