"""A runtime that cannot start, on a real test host: the deploy stops waiting as soon as the unit
fails and shows why (its journal), instead of waiting runtime_ready_timeout_s for "connection refused".

The failure is a real one no plan can see: the runtime's port is taken on the host (here by the
site's own gateway), so the server's bind fails after the unit started.
"""

from __future__ import annotations

import re
import time

import pytest

from deepfleet.deployrun import DeployError
from roles.decrypt_room import HostMemory
from roles.runtime import tmpfs_noswap

pytestmark = pytest.mark.fleet


def test_a_runtime_that_cannot_start_is_reported_with_its_cause_at_once(site, tmp_path):
    taken = site.host.ports["gateway_port"]  # the site's gateway listens there, on every address
    broken = site.with_overrides(tmp_path / "inventory.json", runtime_port=taken, runtime_ready_timeout_s=600)
    started = time.monotonic()
    try:
        with pytest.raises(DeployError) as error:
            site.deploy(broken)
        waited = time.monotonic() - started
        log = error.value.log
        assert "will not become ready: deepfleet-runtime " in log
        assert "journal lines of deepfleet-runtime" in log
        assert re.search(r"cause: .*(address already in use|Errno 98).*", log, re.IGNORECASE), log[-3000:]
        assert "not ready after" not in log  # not the timeout
        wait = re.search(r"exited \(\S+\) and systemd is restarting it after (\d+)s|failed \(\S+\) after (\d+)s", log)
        assert wait and int(wait.group(1) or wait.group(2)) < 30, log[-3000:]
        print(f"failing runtime start reported after {wait.group(1) or wait.group(2)} s of waiting; the whole "
              f"deploy took {waited:.1f} s")
    finally:
        site.deploy()  # the site as the other fleet tests expect it
    with site.client() as client:
        assert client.models.list().data


def test_the_decrypted_model_gets_a_tmpfs_of_the_size_set_seen_only_by_the_runtime(site, tmp_path):
    sized = site.with_overrides(tmp_path / "inventory.json", runtime_decrypt_tmpfs_size="64M")
    try:
        result = site.deploy(sized)
        assert "deepfleet runtime | Runtime systemd unit" in result.changed_operations
        pid = site.on_host("systemctl show --property MainPID --value deepfleet-runtime").strip()
        mounts = [line for line in site.on_host(f"cat /proc/{pid}/mountinfo").splitlines()
                  if " /run/deepfleet-decrypted " in line]
        assert len(mounts) == 1 and " - tmpfs " in mounts[0] and "size=65536k" in mounts[0], mounts
        if tmpfs_noswap(site.on_host("uname -r").strip()):  # its pages never go to swap (Linux 6.4+)
            assert "noswap" in mounts[0].split(" - ")[1].split()[-1].split(","), mounts
        assert "deepfleet-decrypted" not in site.on_host("cat /proc/1/mountinfo")  # not the host's, the unit's
        with site.client() as client:  # the runtime decrypted its config and tokenizer there, as its user
            assert client.models.list().data
    finally:
        site.deploy()


def test_the_memory_fact_reads_a_real_hosts_ram_and_run(site):
    fact = HostMemory()
    memory = fact.process(site.on_host(fact.command()).splitlines())
    ram_kib = int(site.on_host("grep MemTotal: /proc/meminfo").split()[1])
    assert memory["ram_bytes"] == ram_kib * 1024
    assert memory["run_bytes"] == int(site.on_host("stat -f -c '%b %S' /run").split()[0]) * int(
        site.on_host("stat -f -c '%S' /run").strip())
