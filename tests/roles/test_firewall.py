"""The firewall ruleset as the role renders it, checked by nft itself in a throwaway namespace."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from pyinfra.api.util import get_template

from roles.common import TEMPLATES, RoleError
from roles.defaults import DEFAULTS
from roles.firewall import firewall_context

SETTINGS = {**DEFAULTS, "firewall_enabled": True, "firewall_ssh_sources": ["10.0.0.0/24", "fd00::/64"],
            "firewall_gateway_sources": ["10.0.0.0/16", "192.168.7.9"], "ssh_port": 2222}


def _render(settings) -> str:
    return get_template(str(TEMPLATES / "firewall.nft.j2")).render(**firewall_context(settings))


def test_only_ssh_and_gateway_from_their_networks():
    text = _render(SETTINGS)
    assert "policy drop;" in text
    assert "tcp dport 2222 ip saddr @ssh_v4 accept" in text and "tcp dport 2222 ip6 saddr @ssh_v6 accept" in text
    assert "tcp dport 8443 ip saddr @gateway_v4 accept" in text and "gateway_v6" not in text
    assert "elements = { 10.0.0.0/16, 192.168.7.9/32 }" in text
    assert "8000" not in text and "9464" not in text  # runtime and metrics ports: no rule, dropped


def test_a_ray_node_admits_its_peers_on_every_port_and_nobody_else_on_rays():
    """vLLM's torch.distributed store (vllm/v1/executor/ray_executor.py: get_open_port()), NCCL and
    Ray's workers listen on ephemeral ports that the cluster's nodes connect to."""
    text = _render({**SETTINGS, "ray_peers": ["10.0.1.22", "fd00::22"]})
    assert "elements = { 10.0.1.22/32 }" in text and "elements = { fd00::22/128 }" in text
    assert "\t\tip saddr @ray_peers_v4 accept" in text and "\t\tip6 saddr @ray_peers_v6 accept" in text
    assert "6379" not in text  # no port of Ray's for anyone else


def test_runtime_port_opens_only_to_listed_gateways():
    text = _render({**SETTINGS, "firewall_runtime_sources": ["10.0.0.5"]})
    assert "tcp dport 8000 ip saddr @runtime_v4 accept" in text


@pytest.mark.parametrize("override, setting", [({"firewall_ssh_sources": []}, "firewall_ssh_sources"),
                                               ({"firewall_gateway_sources": ["not-a-net"]}, "firewall_gateway_sources")])
def test_missing_or_bad_sources_name_the_setting(override, setting):
    with pytest.raises(RoleError, match=setting):
        firewall_context({**SETTINGS, **override})


@pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare"), reason="needs nft and unshare")
def test_nft_accepts_the_ruleset_in_a_private_network_namespace(tmp_path):
    ruleset = tmp_path / "firewall.nft"
    ruleset.write_text(_render({**SETTINGS, "firewall_runtime_sources": ["10.0.0.5", "fd00::5"]}))
    # A new network namespace of our own: this machine's rules are never touched.
    result = subprocess.run(["unshare", "--net", "sh", "-c", f"nft -f {ruleset} && nft -f {ruleset} && nft list ruleset"],
                            capture_output=True, text=True)
    if result.returncode and "Operation not permitted" in result.stderr:
        pytest.skip("no permission to create a network namespace here")
    assert result.returncode == 0, result.stderr
    assert "table inet deepfleet" in result.stdout and result.stdout.count("chain input") == 1


def test_a_gateway_address_the_role_derived_is_blamed_on_the_gateways_runtime_address_not_on_a_setting():
    settings = {**SETTINGS, "firewall_runtime_sources": ["gw1.example.internal"], "runtime_sources_derived": True}
    with pytest.raises(RoleError) as error:
        firewall_context(settings)
    assert str(error.value).startswith("the runtime_address of a gateway (firewall_runtime_sources is empty, so the "
                                       "gateways' addresses are used): 'gw1.example.internal' is not a network")
    assert "set runtime_address" in str(error.value)


def test_connections_per_source_to_the_gateway_are_capped_by_conntrack():
    text = _render({**SETTINGS, "firewall_gateway_connections_per_source": 300})
    # nftables wiki ("Connlimits"): a dynamic set and `ct count over N` on new connections
    for family, kind in (("ip", "ipv4_addr"), ("ip6", "ipv6_addr")):
        assert (f"tcp dport 8443 ct state new add @gateway_conn_{family} {{ {family} saddr ct count over 300 }} drop"
                in text)
        assert f"set gateway_conn_{family} {{\n\t\ttype {kind}\n\t\tsize 65535\n\t\tflags dynamic" in text
    assert text.index("ct count") < text.index("@gateway_v4 accept")  # counted before the source is accepted
    assert "ct count" not in _render({**SETTINGS, "firewall_gateway_connections_per_source": 0})
