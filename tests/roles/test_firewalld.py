"""Rocky/RHEL run firewalld by default, which drops the gateway, runtime and Ray ports: the firewall
role opens exactly those there, the way firewalld's documentation does it (`firewall-cmd --permanent
--add-port=PORT/tcp`, then `firewall-cmd --reload`), and only those not open yet."""

from __future__ import annotations

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


def test_ray_peers_are_trusted_sources_and_rays_ports_stay_closed_to_the_rest():
    """A Ray node's peers reach every port (vLLM's torch.distributed store and NCCL listen on
    ephemeral ones): firewalld's way is the peer's address as a source of the `trusted` zone
    (`firewall-cmd --permanent --zone=trusted --add-source=ADDRESS`). Ray has no authentication, so
    its ports open to every address would let anyone run code on the cluster."""
    from deepfleet.paths import PROJECT_ROOT

    multinode = PROJECT_ROOT / "inventories" / "multinode.py"
    facts = with_facts(load_case("rocky9-8xh100"), **RUNNING)
    opened = find(plan(facts, firewall, inventory=multinode, host_name="h100-a"), "firewalld").shell()
    assert "firewall-cmd --permanent --zone=trusted --add-source=10.0.2.22" in opened
    assert not [command for command in opened if "6379" in command or "10002-10999" in command]
    trusted = {"roles.firewalld.FirewalldPorts": {"$output": ["state=running", "ports=22/tcp 8443/tcp 8000/tcp",
                                                                 "trusted=10.0.2.22"]}}
    again = find(plan(with_facts(load_case("rocky9-8xh100"), **trusted), firewall, inventory=multinode,
                      host_name="h100-a"), "firewalld")
    assert again.change == "no"
