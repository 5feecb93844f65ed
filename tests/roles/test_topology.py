"""Who does what, from an inventory's groups (roles/topology.py), on the example inventories and on
inventories without groups."""

from __future__ import annotations

from pathlib import Path

from deepfleet.inventoryfile import load_inventory
from deepfleet.paths import PROJECT_ROOT
from roles.topology import fleet_upstreams, holds_model, runs_gateway, runs_runtime, runtime_needs_tls

INVENTORIES = PROJECT_ROOT / "inventories"


def _hosts(path: Path) -> dict:
    return {host.name: host for host in load_inventory(path)}


def test_fleet_gateways_route_to_every_gpu_node_over_mutual_tls():
    hosts = _hosts(INVENTORIES / "fleet.py")
    assert [name for name, host in hosts.items() if holds_model(host)] == ["gpu1", "gpu2", "gpu3", "gpu4"]
    assert [name for name, host in hosts.items() if runs_gateway(host)] == ["gw1", "gw2"]
    for gateway in ("gw1", "gw2"):
        assert fleet_upstreams(hosts[gateway]) == [
            {"name": f"gpu{n}", "url": f"https://10.0.1.2{n}:8000"} for n in range(1, 5)]
    assert all(runtime_needs_tls(hosts[f"gpu{n}"]) for n in range(1, 5))


def test_hospital_gateway_holds_no_model_and_routes_to_both_nodes():
    hosts = _hosts(INVENTORIES / "hospital.py")
    assert not holds_model(hosts["gateway-1"]) and runs_gateway(hosts["gateway-1"])
    assert [u["url"] for u in fleet_upstreams(hosts["gateway-1"])] == ["https://10.20.0.11:8000",
                                                                      "https://10.20.0.12:8000"]


def test_hosts_without_groups_each_serve_alone_on_loopback(tmp_path):
    inventory = tmp_path / "lab.py"
    inventory.write_text('lab = [("a", {"ssh_hostname": "10.9.0.1"}), ("b", {"ssh_hostname": "10.9.0.2"})]\n')
    hosts = _hosts(inventory)
    for name, host in hosts.items():
        assert holds_model(host) and runs_gateway(host) and runs_runtime(host)
        assert not runtime_needs_tls(host)
        assert fleet_upstreams(host) == [{"name": name, "url": "http://127.0.0.1:8000"}]


def test_a_host_in_both_groups_reaches_its_own_replica_over_tls_too_when_other_gateways_exist(tmp_path):
    inventory = tmp_path / "pair.py"
    inventory.write_text('gateways = ["a", "b"]\ngpu_nodes = [("a", {"ssh_hostname": "10.9.0.1"}), '
                         '("b", {"ssh_hostname": "10.9.0.2"})]\n')
    hosts = _hosts(inventory)
    assert [u["url"] for u in fleet_upstreams(hosts["a"])] == ["https://10.9.0.1:8000", "https://10.9.0.2:8000"]


def test_only_the_ray_head_of_a_multinode_group_is_a_replica():
    hosts = _hosts(INVENTORIES / "multinode.py")
    replicas = [name for name, host in hosts.items() if runs_runtime(host)]
    workers = [name for name, host in hosts.items() if holds_model(host) and not runs_runtime(host)]
    assert len(replicas) == 1 and workers and replicas[0] not in workers
