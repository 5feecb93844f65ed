"""firewalld (on by default on Rocky/RHEL): open the ports deepfleet serves, and admit a Ray node's peers.

The gateway port everywhere a gateway listens, the runtime port where gateways on other hosts
reach the runtime (mutual TLS), the node exporter's port where a Prometheus on another host
scrapes it and Prometheus's where it listens off loopback (roles/monitoring.py):
`firewall-cmd --permanent --add-port` for each port not open yet. A Ray node's peers reach every
TCP port (roles/ray.py, ray_peers), and nobody else Ray's: the peers' addresses are the sources of
deepfleet's own zone `deepfleet-ray` (target default, so nothing is forwarded), which opens every
TCP port; a peer that left the group is removed from it, and a peer's address already bound to
another zone is refused, naming it (firewalld binds a source to one zone only). Source bindings
take precedence over the zones of interfaces. Then one `firewall-cmd --reload`. Hosts without
firewalld running are left alone (Debian/Ubuntu use the nftables role, roles/firewall.py).

    FirewalldPorts    {"running": firewalld runs, "ports": ["22/tcp", ...] of the permanent config}
    FirewalldRayZone  {"sources": the deepfleet-ray zone's sources (None: no such zone),
                       "zones": {peer address: the zone it is a source of, or None}}
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from .common import RoleError

RAY_ZONE = "deepfleet-ray"


class FirewalldPorts(FactBase):
    """Whether firewalld runs, and the ports its permanent configuration opens."""

    def command(self) -> str:
        return ('echo "state=$(firewall-cmd --state 2>&1)"; '
                'echo "ports=$(firewall-cmd --permanent --list-ports 2>/dev/null)"')

    @staticmethod
    def default() -> dict:
        return {"running": False, "ports": []}

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {"running": values.get("state", "").strip() == "running", "ports": values.get("ports", "").split()}


class FirewalldRayZone(FactBase):
    """The sources of deepfleet's Ray zone, and the zone each of `peers` is a source of."""

    def command(self, peers: tuple[str, ...]) -> str:
        lines = [f'echo "sources=$(firewall-cmd --permanent --zone={RAY_ZONE} --list-sources 2>/dev/null '
                 '|| echo absent)"']
        lines += [f'echo "zone {peer}=$(firewall-cmd --permanent --get-zone-of-source={shlex.quote(peer)} '
                  '2>/dev/null)"' for peer in peers]
        return "; ".join(lines)

    @staticmethod
    def default() -> dict:
        return {"sources": None, "zones": {}}

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        sources = values.pop("sources", "absent").strip()
        zones = {key.removeprefix("zone "): (None if value.strip() in ("", "no zone") else value.strip())
                 for key, value in values.items() if key.startswith("zone ")}
        return {"sources": None if sources == "absent" else sources.split(), "zones": zones}


def served_ports(settings: dict) -> list[str]:
    """The TCP ports this host serves to other machines, firewalld's way ("8443/tcp", "8000/tcp")."""
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
def firewalld_open(ports: list[str], ray_peers: list[str] | None = None):
    """
    Open `ports` in firewalld's permanent configuration and admit `ray_peers` on every TCP port
    (deepfleet's Ray zone), then reload it, where firewalld runs.

    + ports: e.g. ["8443/tcp", "8000/tcp"]
    + ray_peers: the other nodes of this host's Ray cluster, e.g. ["10.0.2.22"]
    """
    state = host.get_fact(FirewalldPorts)
    if not state["running"]:
        host.noop("firewalld is not running")
        return
    commands = [StringCommand("firewall-cmd", "--permanent", f"--add-port={port}")
                for port in ports if port not in state["ports"]]
    if ray_peers:
        commands += _ray_zone_commands(host.get_fact(FirewalldRayZone, peers=tuple(ray_peers)), ray_peers)
    if not commands:
        host.noop(f"firewalld admits {', '.join(ports)}" + (f", and {', '.join(ray_peers)} on every TCP port"
                                                            if ray_peers else ""))
        return
    yield from commands
    yield StringCommand("firewall-cmd", "--reload")


def check_ray_peers_bindable(peers: list[str]) -> None:
    """RoleError (while planning) when firewalld runs and a Ray peer's address is a source of another
    zone: firewalld binds a source to one zone only, so deepfleet's zone could not admit it."""
    if not peers or not host.get_fact(FirewalldPorts)["running"]:
        return
    for peer, bound in host.get_fact(FirewalldRayZone, peers=tuple(peers))["zones"].items():
        if bound and bound != RAY_ZONE:
            raise RoleError(f"{host.name}: the Ray peer {peer} is a source of firewalld's zone {bound!r}, and "
                            "firewalld binds a source to one zone only; remove it there (firewall-cmd --permanent "
                            f"--zone={bound} --remove-source={peer}) so that deepfleet's zone {RAY_ZONE} admits it on "
                            "every port")


def _ray_zone_commands(zone: dict, peers: list[str]) -> list[StringCommand]:
    """Make deepfleet's Ray zone admit exactly `peers` on every TCP port."""
    commands = []
    sources = zone["sources"]
    if sources is None:
        commands += [StringCommand("firewall-cmd", "--permanent", f"--new-zone={RAY_ZONE}"),
                     StringCommand("firewall-cmd", "--permanent", f"--zone={RAY_ZONE}", "--add-port=1-65535/tcp")]
        sources = []
    commands += [StringCommand("firewall-cmd", "--permanent", f"--zone={RAY_ZONE}", f"--add-source={peer}")
                 for peer in peers if peer not in sources]
    commands += [StringCommand("firewall-cmd", "--permanent", f"--zone={RAY_ZONE}", f"--remove-source={source}")
                 for source in sources if source not in peers]
    return commands
