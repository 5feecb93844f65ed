"""The ray role's unit on a node of inventories/multinode.py: Ray's address is the node's IP address
on the cluster network, the one its peers' firewalls admit; a NIC named for NCCL and Gloo
(ray_network_interface) must carry that address, or their traffic would come from an address
the peers drop."""

from __future__ import annotations

import pytest

from deepfleet.paths import PROJECT_ROOT
from roles.common import RoleError
from roles.ray import ray

from .factplan import find, load_case, plan, with_facts

MULTINODE = PROJECT_ROOT / "inventories" / "multinode.py"
ENS8 = {"roles.facts.InterfaceAddresses": {"interface=ens8": {"$output": [
    "3: ens8    inet 10.0.3.21/24 brd 10.0.3.255 scope global ens8\\       valid_lft forever preferred_lft forever",
    "3: ens8    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever"]}}}


def _unit(data=None) -> str:
    ops = plan(with_facts(load_case("rocky9-8xh100"), **ENS8), ray, data=data, inventory=MULTINODE,
               host_name="h100-a")
    return next(iter(find(ops, "Ray head systemd unit").uploads().values()))


def test_the_unit_uses_the_nodes_address_and_the_cluster_nic():
    unit = _unit()
    assert "--node-ip-address=10.0.2.21" in unit and "--head --port=6379" in unit
    unit = _unit({"ray_network_interface": "ens8", "ray_node_address": "10.0.3.21"})
    assert "--node-ip-address=10.0.3.21" in unit and "Environment=VLLM_HOST_IP=10.0.3.21" in unit
    assert "Environment=NCCL_SOCKET_IFNAME=ens8" in unit


def test_a_cluster_nic_without_the_nodes_address_is_refused_naming_its_addresses():
    with pytest.raises(RoleError) as error:
        _unit({"ray_network_interface": "ens8"})
    assert str(error.value) == ("h100-a: ray_network_interface ens8 has 10.0.3.21, fe80::1, and this node's Ray "
                                "address is 10.0.2.21: set ray_node_address to its address on ens8, so that Ray, NCCL "
                                "and Gloo all use the cluster network and the peers' firewalls admit it")


def test_a_nic_the_host_lacks_is_refused():
    missing = {"roles.facts.InterfaceAddresses": {"*": {"$output": ["no-such-interface"]}}}
    with pytest.raises(RoleError, match="ray_network_interface is 'ens9', which is no network interface"):
        plan(with_facts(load_case("rocky9-8xh100"), **missing), ray, data={"ray_network_interface": "ens9"},
             inventory=MULTINODE, host_name="h100-a")


def test_a_node_whose_address_is_a_name_is_refused():
    with pytest.raises(RoleError, match=r"h100-a: Ray needs the node's IP address, and its address is 'gpu-b.lan'"):
        plan(load_case("rocky9-8xh100"), ray, data={"ray_node_address": "gpu-b.lan"}, inventory=MULTINODE,
             host_name="h100-a")
