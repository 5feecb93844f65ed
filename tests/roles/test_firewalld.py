"""Rocky/RHEL run firewalld by default, which drops the gateway and runtime ports and a Ray cluster's
traffic: the firewall role opens exactly those ports there, the way firewalld's documentation does it
(`firewall-cmd --permanent --add-port=PORT/tcp`, then `firewall-cmd --reload`), only those not open
yet, and admits a Ray node's peers through a zone of its own."""

from __future__ import annotations

import pytest

from roles.common import RoleError
from roles.firewall import firewall

from .factplan import find, load_case, plan, with_facts

RUNNING = {"roles.firewalld.FirewalldPorts": {"$output": ["state=running", "ports=22/tcp"]}}


def test_rocky_with_firewalld_running_gets_the_gateway_port_opened():
    ops = plan(with_facts(load_case("rocky9-8xh100"), **RUNNING), firewall)
    opened = find(ops, "firewalld")
    assert opened.shell() == ["firewall-cmd --permanent --add-port=8443/tcp", "firewall-cmd --reload"]


def test_ports_already_open_are_left_alone():
    open_ports = {"roles.firewalld.FirewalldPorts": {"$output": ["state=running", "ports=22/tcp 8443/tcp"]}}
    assert find(plan(with_facts(load_case("rocky9-8xh100"), **open_ports), firewall), "firewalld").change == "no"


def test_without_firewalld_running_nothing_is_touched():
    stopped = {"roles.firewalld.FirewalldPorts": {"$output": ["state=not running", "ports="]}}
    assert find(plan(with_facts(load_case("rocky9-8xh100"), **stopped), firewall), "firewalld").change == "no"


def test_debian_hosts_keep_the_nftables_role():
    assert plan(load_case("debian12-nogpu"), firewall) == []  # firewall_enabled is off: nothing there
    enabled = plan(load_case("debian12-nogpu"), firewall, data={"firewall_enabled": True,
                   "firewall_ssh_sources": ["10.0.0.0/24"], "firewall_gateway_sources": ["10.0.0.0/24"]})
    assert "firewall-cmd" not in repr([op.commands for op in enabled]) and find(enabled, "Firewall ruleset")


def test_monitoring_ports_are_opened_where_they_are_reached_from_other_hosts():
    """A node exporter scraped by the Prometheus on another host, and a Prometheus off loopback."""
    from deepfleet.paths import PROJECT_ROOT

    facts = with_facts(load_case("rocky9-8xh100"), **RUNNING)
    fleet = PROJECT_ROOT / "inventories" / "fleet.py"
    gpu1 = find(plan(facts, firewall, data={"monitoring_enabled": True}, inventory=fleet, host_name="gpu1"),
                "firewalld")
    assert "firewall-cmd --permanent --add-port=9100/tcp" in gpu1.shell()
    local = find(plan(facts, firewall, data={"monitoring_enabled": True}), "firewalld")
    assert local.shell() == ["firewall-cmd --permanent --add-port=8443/tcp", "firewall-cmd --reload"]
    off_loopback = find(plan(facts, firewall, data={"monitoring_enabled": True,
                                                    "monitoring_prometheus_listen_address": "10.0.0.11"}),
                        "firewalld")
    assert "firewall-cmd --permanent --add-port=9090/tcp" in off_loopback.shell()


def _multinode_head(zone_output: list[str], ports="22/tcp 8443/tcp 8000/tcp", **data):
    from deepfleet.paths import PROJECT_ROOT

    facts = with_facts(load_case("rocky9-8xh100"),
                       **{"roles.firewalld.FirewalldPorts": {"$output": ["state=running", f"ports={ports}"]},
                          "roles.firewalld.FirewalldRayZone": {"*": {"$output": zone_output}}})
    return plan(facts, firewall, data=data or None, inventory=PROJECT_ROOT / "inventories" / "multinode.py",
                host_name="h100-a")


def test_ray_peers_are_the_sources_of_deepfleets_own_zone_which_admits_every_tcp_port():
    """A Ray node's peers reach every port (vLLM's torch.distributed store and NCCL listen on
    ephemeral ones): firewalld's way is a zone whose sources are the peers. Its target stays
    `default` (not trusted's ACCEPT, which would also forward the peers' traffic anywhere), and Ray's
    ports are opened to nobody else: Ray has no authentication."""
    opened = find(_multinode_head(["sources=absent", "zone 10.0.2.22=no zone"]), "firewalld").shell()
    assert opened == ["firewall-cmd --permanent --new-zone=deepfleet-ray",
                      "firewall-cmd --permanent --zone=deepfleet-ray --add-port=1-65535/tcp",
                      "firewall-cmd --permanent --zone=deepfleet-ray --add-source=10.0.2.22",
                      "firewall-cmd --reload"]
    assert find(_multinode_head(["sources=10.0.2.22", "zone 10.0.2.22=deepfleet-ray"]), "firewalld").change == "no"


def test_a_node_that_left_the_ray_group_is_removed_from_the_zone():
    stale = find(_multinode_head(["sources=10.0.2.22 10.0.2.99", "zone 10.0.2.22=deepfleet-ray"]), "firewalld")
    assert stale.shell() == ["firewall-cmd --permanent --zone=deepfleet-ray --remove-source=10.0.2.99",
                             "firewall-cmd --reload"]


def test_a_peer_bound_to_another_zone_is_refused_naming_the_zone_and_the_fix():
    with pytest.raises(RoleError) as error:
        _multinode_head(["sources=absent", "zone 10.0.2.22=internal"])
    assert str(error.value) == ("h100-a: the Ray peer 10.0.2.22 is a source of firewalld's zone 'internal', and "
                                "firewalld binds a source to one zone only; remove it there (firewall-cmd --permanent "
                                "--zone=internal --remove-source=10.0.2.22) so that deepfleet's zone deepfleet-ray "
                                "admits it on every port")
