"""The firewall role (nftables): a host admits SSH and the gateway port only from the networks the
inventory lists (and the runtime port only from gateways on other hosts; on a Ray node, every port
from the other nodes of its Ray cluster, roles/ray.py); the rest is dropped. New connections to the
gateway port beyond `firewall_gateway_connections_per_source` open ones from one address are
dropped (`ct count`).
On Rocky/RHEL, where firewalld runs by default, it opens those ports in firewalld instead
(roles/firewalld.py); there the gateway's own per-client limit is the only connection cap.

Off unless `firewall_enabled`. It replaces only its own table (`inet deepfleet`), atomically, after
`nft -c` has checked the new ruleset; established connections (this deploy's SSH session) go on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files, server, systemd

from .common import RoleError, template
from .defaults import DEFAULTS
from .firewalld import check_ray_peers_bindable, firewalld_open, served_ports
from .hostos import host_os
from .limits_store import runs_store
from .monitoring import monitoring_hosts, node_exporter_is_remote, prometheus_is_remote
from .ray import ray_peers
from .topology import gateway_hosts, holds_model, runtime_address, runtime_needs_tls


def firewall_context(settings: Mapping) -> dict:
    """Sets and rules for templates/firewall.nft.j2; RoleError names a missing or bad setting."""
    admitted = [("ssh", settings["firewall_ssh_port"] or settings.get("ssh_port") or 22, "firewall_ssh_sources"),
                ("gateway", settings["gateway_port"], "firewall_gateway_sources"),
                ("runtime", settings["runtime_port"], "firewall_runtime_sources")]
    if settings.get("ray_peers"):  # a Ray node: every port from the other nodes of its cluster (port None)
        admitted.append(("ray_peers", None, "ray_peers"))
    if settings.get("node_exporter_sources"):  # scraped by Prometheus on other hosts (roles/monitoring.py)
        admitted.append(("node_exporter", settings["monitoring_node_exporter_port"], "node_exporter_sources"))
    if settings.get("limits_store_sources"):  # the fleet's limits store, from the other gateways only
        admitted.append(("limits_store", settings["gateway_limits_store_port"], "limits_store_sources"))
    if settings.get("monitoring_prometheus_sources"):
        admitted.append(("prometheus", settings["monitoring_prometheus_port"], "monitoring_prometheus_sources"))
    sets, rules = [], []
    for name, port, setting in admitted:
        sources = settings[setting] or []
        if not sources and setting in ("firewall_ssh_sources", "firewall_gateway_sources"):
            raise RoleError(f"firewall_enabled is set but {setting} is empty: list the networks allowed to "
                            f"reach {name} (port {port}), e.g. [\"10.0.0.0/24\"], or it would be unreachable")
        label = setting
        if setting == "ray_peers":
            label = "the runtime_address of a node of this host's Ray cluster (ray_node_address)"
        if setting == "firewall_runtime_sources" and settings.get("runtime_sources_derived"):
            label = ("the runtime_address of a gateway (firewall_runtime_sources is empty, so the gateways' "
                     "addresses are used)")
        networks = [_network(source, label) for source in sources]
        for family, version, nft_type in (("ip", 4, "ipv4_addr"), ("ip6", 6, "ipv6_addr")):
            elements = [str(n) for n in networks if n.version == version]
            if elements:
                sets.append({"name": f"{name}_v{version}", "type": nft_type, "elements": elements})
                rules.append({"port": port, "family": family, "set": f"{name}_v{version}"})
    limits = []
    per_source = settings.get("firewall_gateway_connections_per_source")
    if per_source:  # connections per client address to the gateway, counted by conntrack
        for family, nft_type in (("ip", "ipv4_addr"), ("ip6", "ipv6_addr")):
            limits.append({"set": f"gateway_conn_{family}", "type": nft_type, "family": family,
                           "port": settings["gateway_port"], "count": int(per_source)})
    return {"sets": sets, "rules": rules, "connection_limits": limits}


def fleet_sources(settings: dict) -> dict:
    """`settings` plus what the fleet's topology admits: the runtime port from the gateways on other
    hosts (unless firewall_runtime_sources lists them), the node exporter port from the monitoring
    hosts (roles/monitoring.py), the limits store's port from the other gateways (roles/limits_store.py) and, on a
    Ray node, every port from the other nodes of its cluster (roles/ray.py, ray_peers)."""
    if runtime_needs_tls(host) and not settings["firewall_runtime_sources"]:
        settings["firewall_runtime_sources"] = [runtime_address(gateway) for gateway in gateway_hosts(host.inventory)
                                                if gateway.name != host.name]
        settings["runtime_sources_derived"] = True
    if settings["monitoring_enabled"] and node_exporter_is_remote(host):
        settings["node_exporter_sources"] = [runtime_address(monitor) for monitor in monitoring_hosts(host.inventory)
                                             if monitor.name != host.name]
    if runs_store(host):
        settings["limits_store_sources"] = [runtime_address(gateway) for gateway in gateway_hosts(host.inventory)
                                            if gateway.name != host.name]
    if settings["ray_head"] and holds_model(host):
        settings["ray_peers"] = ray_peers(host)
    return settings


def _network(source: str, setting: str):
    try:
        return ipaddress.ip_network(source, strict=False)
    except (TypeError, ValueError):
        if setting.startswith("the runtime_address of a node"):
            fix = "set ray_node_address (or runtime_address) of that node to its IP address"
        elif setting.startswith("the runtime_address"):
            fix = ("set runtime_address (or ssh_hostname) of that gateway to its IP address, or list the gateways' "
                   "networks in firewall_runtime_sources")
        else:
            fix = "write an address or CIDR like 10.0.0.0/24 or fd00::/64"
        raise RoleError(f"{setting}: {source!r} is not a network; {fix}") from None


@deploy("deepfleet firewall", data_defaults=DEFAULTS)
def firewall():
    """Install nftables if missing, render the ruleset, check it, load it (again only if it changed)."""
    data = host.data
    if host_os().family == "rhel":  # firewalld is on by default there and would drop what deepfleet serves
        settings = fleet_sources({key: data.get(key) for key in [*DEFAULTS, "ssh_port"]})
        settings["runtime_remote"] = runtime_needs_tls(host)
        settings["prometheus_remote"] = prometheus_is_remote(host, settings)
        peers = settings.get("ray_peers") or []  # IP addresses: the ray role refuses others while planning
        check_ray_peers_bindable(peers)
        firewalld_open(name="Open deepfleet's ports in firewalld", ports=served_ports(settings), ray_peers=peers)
        return
    if not data.firewall_enabled:
        host.noop("firewall_enabled is off")
        return
    context = firewall_context(fleet_sources({key: data.get(key) for key in [*DEFAULTS, "ssh_port"]}))
    ruleset_path = f"{data.deepfleet_config_dir}/firewall.nft"
    if "nftables" not in (host.get_fact(DebPackages) or {}):
        apt.packages(name="Install nftables", packages=["nftables"], update=True)
    ruleset = files.template(name="Firewall ruleset", src=template("firewall.nft.j2"), dest=ruleset_path,
                             user="root", group="root", mode="0640", **context)
    server.shell(name="Check the firewall ruleset", commands=[f"nft -c -f {ruleset_path}"], _if=ruleset.did_change)
    unit = files.template(name="Firewall systemd unit", src=template("systemd/deepfleet-firewall.service.j2"),
                          dest="/etc/systemd/system/deepfleet-firewall.service", user="root", group="root",
                          mode="0644", ruleset_path=ruleset_path)
    systemd.daemon_reload(name="Reload systemd units for deepfleet-firewall", _if=unit.did_change)
    systemd.service(name="Enable and start deepfleet-firewall", service="deepfleet-firewall.service",
                    running=True, enabled=True)
    # nft -f replaces the table in one transaction: no moment without rules.
    server.shell(name="Load the changed firewall ruleset", commands=[f"nft -f {ruleset_path}"],
                 _if=ruleset.did_change)
