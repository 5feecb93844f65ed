"""The fleet's limits store planned against recorded facts (inventories/fleet.py: gateways gw1 and
gw2): the OS's own package on the first gateway (Debian 12: redis-server 7.0, Debian 13:
valkey-server, Rocky 9: AppStream's redis), TLS only on its address with a password that never
shows, persistence on; every gateway told where it is; nothing at all for one gateway."""

from __future__ import annotations

import pytest
import yaml

from deepfleet.paths import PROJECT_ROOT
from roles.common import RoleError
from roles.gateway import gateway
from roles.limits_store import limits_store, store_host
from deepfleet.inventoryfile import load_inventory

from .factplan import find, load_case, plan, with_facts

FLEET = PROJECT_ROOT / "inventories" / "fleet.py"
EMPTY = {"server.Groups": [], "server.Users": {}, "files.Directory": {"*": None}, "files.File": {"*": None},
         "files.Link": {"*": None}, "roles.facts.Sha256File": {"*": None}, "files.Sha1File": {"*": None},
         "deb.DebPackages": {}, "rpm.RpmPackages": {}, "apt.AptSources": [], "systemd.SystemdStatus": {"*": {}},
         "systemd.SystemdEnabled": {"*": {}}}


@pytest.mark.parametrize("case, package, server, user, distro_unit", [
    ("debian12-nogpu", "redis-server", "/usr/bin/redis-server", "redis", "redis-server.service"),
    ("debian13-2xa100-stock", "valkey-server", "/usr/bin/valkey-server", "valkey", "valkey-server.service"),
    ("rocky9-8xh100", "redis", "/usr/bin/redis-server", "redis", "redis.service"),
])
def test_the_first_gateway_runs_the_os_store_over_tls_with_a_password_and_persistence(
        control_data, case, package, server, user, distro_unit):
    ops = plan(with_facts(load_case(case), **EMPTY), limits_store, data=control_data, inventory=FLEET,
               host_name="gw1")
    names = [op.name.split(" | ")[1] for op in ops]
    # masked before the package is installed: the package's own unit never starts a default store
    assert names.index(f"Mask the package's own {distro_unit} (deepfleet runs the store)") < \
        names.index("Limits store package")
    installed = " ".join(find(ops, "Limits store package").shell())
    assert f"install" in installed and package in installed.split()
    config = find(ops, "Limits store config file").uploads()["/etc/deepfleet-limits-store/store.conf"]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in config.splitlines()
             if line and not line.startswith("#")}
    assert (lines["bind"], lines["port"], lines["tls-port"]) == ("10.0.0.11", "0", "6380")  # no plaintext port
    assert lines["tls-protocols"] == '"TLSv1.3"' and lines["appendonly"] == "yes"
    assert lines["appendfsync"] == "everysec" and lines["maxmemory-policy"] == "noeviction"
    assert lines["include"] == "/etc/deepfleet-limits-store/password.conf" and "requirepass" not in config
    password = (control_data_path(control_data) / "limits-store" / "requirepass.conf").read_text().split()[1]
    shown = repr([op.commands for op in ops])
    assert password not in shown  # the password goes by secret_file: compared by hash, never shown
    assert "Limits store password" in names
    unit = find(ops, "Limits store systemd unit").uploads()["/etc/systemd/system/deepfleet-limits-store.service"]
    assert f"User={user}" in unit and f"ExecStart={server} /etc/deepfleet-limits-store/store.conf" in unit
    assert "Type=notify" in unit and "--supervised systemd" in unit


def test_every_gateway_gets_the_store_url_its_share_and_the_password_file(control_data):
    facts = with_facts(load_case("debian12-nogpu"), **EMPTY)
    ops = plan(facts, gateway, data=control_data, inventory=FLEET, host_name="gw2")
    assert not any("Limits store config file" in op.name for op in ops)  # gw2 only uses it
    config = yaml.safe_load(find(ops, "Gateway config").uploads()["/etc/deepfleet/gateway.yaml"])
    assert config["limits_store"] == {"url": "rediss://10.0.0.11:6380/0", "gateways": 2, "timeout_s": 0.5,
                                      "password_file": "/etc/deepfleet/limits-store.password",
                                      "ca": "/etc/deepfleet/tls/ca.crt"}
    assert config["state_dir"] == "/var/lib/deepfleet-gateway"
    assert "root:deepfleet-gateway" in " ".join(find(ops, "Limits store password").shell())


def test_one_gateway_or_embedded_keeps_its_own_buckets_and_a_bad_store_host_is_named(control_data):
    facts = with_facts(load_case("debian12-nogpu"), **EMPTY)
    ops = plan(facts, gateway, data=control_data, host_name="h1")
    config = yaml.safe_load(find(ops, "Gateway config").uploads()["/etc/deepfleet/gateway.yaml"])
    assert "limits_store" not in config and not any("Limits store" in op.name for op in ops)
    assert store_host(load_inventory(FLEET, {"gateway_limits_store": "embedded"})) is None
    assert store_host(load_inventory(FLEET, {"gateway_limits_store_host": "gw2"})).name == "gw2"
    with pytest.raises(RoleError, match="gateway_limits_store_host is 'gpu1'"):
        store_host(load_inventory(FLEET, {"gateway_limits_store_host": "gpu1"}))


def control_data_path(control_data: dict):
    from pathlib import Path

    return Path(control_data["gateway_pki_dir"])


def test_hosts_that_stand_alone_keep_their_own_buckets_unless_told_to_share(tmp_path):
    standalone = tmp_path / "standalone.py"  # no gateways/gpu_nodes groups: each host its own endpoint
    standalone.write_text("hosts = ['a1', 'a2']\n")
    assert store_host(load_inventory(standalone)) is None
    assert store_host(load_inventory(standalone, {"gateway_limits_store": "shared"})).name == "a1"
