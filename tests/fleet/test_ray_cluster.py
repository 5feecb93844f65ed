"""The ray role forms a real two-host Ray cluster on test hosts, behind the firewall role: `ray status`
lists both nodes, a task placed on the worker sends its result to the head, a peer reaches any port
(vLLM's torch.distributed store and NCCL listen on ephemeral ones), and an address that is not a
peer reaches none. Each host has its own network namespace (never this
machine's network); the test's own namespace joins them:

    namespace dray-<id>: bridge 10.252.0.9 (an outsider, not a Ray node)
        veth -- head   eth1 10.252.0.1  (ray_head; GCS 6379)
        veth -- worker eth1 10.252.0.2

vLLM's CPU build cannot run one model over Ray (docs/runtime.md), so the cluster is deployed by
tests/fleet/deploys/ray_cluster.py (base, firewall, the runtime venv with the `ray` extra, the Ray
units) and not by the site deploy, whose head would then start vLLM on it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deepfleet import testhosts
from deepfleet.demo import MODEL_NAME
from deepfleet.deployrun import run_deploy
from deepfleet.paths import LOCAL_INVENTORY, cache_dir
from roles.defaults import DEFAULTS

from .test_firewall import _LISTENERS, _PROBE, _run

pytestmark = pytest.mark.fleet

RAY_CLUSTER_DEPLOY = Path(__file__).resolve().parent / "deploys" / "ray_cluster.py"
HEAD, WORKER, OUTSIDER = "10.252.0.1", "10.252.0.2", "10.252.0.9"
RAY = f"{DEFAULTS['deepfleet_home']}/venv/bin/ray"
PYTHON = f"{DEFAULTS['deepfleet_home']}/venv/bin/python"
SERVICE_USER = DEFAULTS["deepfleet_user"]
EPHEMERAL_PORT = 41234  # in Linux's default ip_local_port_range (32768-60999), where ephemeral ports come from

# A Ray driver on the head, as the runtime (vLLM's engine) would be one: the nodes it sees, and a
# task pinned to the worker whose 8 MiB result (too big to inline) comes back through the object store.
_DRIVER = textwrap.dedent("""
    import json, socket, sys, ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    ray.init(address=sys.argv[1], logging_level="ERROR")
    nodes = [node for node in ray.nodes() if node["Alive"]]
    worker = next(node for node in nodes if node["NodeManagerAddress"] == sys.argv[2])

    @ray.remote(num_cpus=0)
    def where(size):
        return socket.gethostname(), b"x" * size

    strategy = NodeAffinitySchedulingStrategy(node_id=worker["NodeID"], soft=False)
    name, blob = ray.get(where.options(scheduling_strategy=strategy).remote(8 << 20), timeout=180)
    print(json.dumps({"nodes": sorted(node["NodeManagerAddress"] for node in nodes), "ran_on": name,
                      "bytes": len(blob), "driver_on": socket.gethostname()}))
""")


@pytest.fixture(scope="module")
def ray_hosts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    fleet = testhosts.TestFleet(root / "hosts")
    namespace = None
    try:
        fleet.start(2, testhosts.ensure_image(cache_dir() / "testhost"), name_prefix="ray", network="none")
        namespace = f"dray-{fleet.fleet_id}"
        _run("ip", "netns", "add", namespace)
        _run("ip", "-n", namespace, "link", "add", "dray0", "type", "bridge")
        _run("ip", "-n", namespace, "addr", "add", f"{OUTSIDER}/24", "dev", "dray0")
        _run("ip", "-n", namespace, "link", "set", "dray0", "up")
        for index, (host, address) in enumerate(zip(fleet.hosts, (HEAD, WORKER))):
            pid = _run("docker", "inspect", "-f", "{{.State.Pid}}", host.container).strip()
            # each veth is made inside the test's namespace, its peer moved straight into the host's
            _run("ip", "-n", namespace, "link", "add", f"dray{index + 1}", "type", "veth", "peer", "name", "eth1",
                 "netns", pid)
            _run("ip", "-n", namespace, "link", "set", f"dray{index + 1}", "master", "dray0", "up")
            _run("docker", "exec", host.container, "sh", "-c",
                 f"ip addr add {address}/24 dev eth1 && ip link set eth1 up")
        head, worker = fleet.hosts
        common = {"model_name": MODEL_NAME, "deepfleet_cache_dir": str(cache_dir()), "ray_head": head.inventory_name,
                  "runtime_wheel_extras": [], "firewall_enabled": True, "firewall_ssh_sources": [f"{OUTSIDER}/32"],
                  "firewall_gateway_sources": [f"{OUTSIDER}/32"]}
        (root / "inventory.json").write_text(json.dumps({"hosts": [
            [head.inventory_name, {**common, "runtime_address": HEAD}],
            [worker.inventory_name, {**common, "runtime_address": WORKER}]]}))
        yield {"root": root, "namespace": namespace, "head": head, "worker": worker}
    finally:
        if namespace:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        fleet.destroy()


def _on(host, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", host.container, *command], capture_output=True, text=True)


def _active_nodes(head) -> int:
    """How many nodes `ray status` on the head lists as active (0 while it cannot reach the GCS)."""
    status = _on(head, "runuser", "-u", SERVICE_USER, "--", RAY, "status", f"--address={HEAD}:6379")
    active = re.search(r"^Active:\n(.*?)^Pending:", status.stdout, re.M | re.S)
    return len(re.findall(r"^\s*1 node_", active.group(1), re.M)) if active else 0


def _wait_for_nodes(head, count: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while (found := _active_nodes(head)) != count and time.monotonic() < deadline:
        time.sleep(3)
    return found


def _from_peer(worker, port: int, timeout_s: float = 20) -> str:
    """What the worker gets connecting to the head's `port` (retried while the listener starts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = _on(worker, "python3", "-c", _PROBE, WORKER, "-", json.dumps([(HEAD, port, False)]))
        result = json.loads(probe.stdout)[str(port)] if probe.returncode == 0 else probe.stderr
        if result != "refused" or time.monotonic() > deadline:
            return result
        time.sleep(1)


def _from_outsider(namespace: str, address: str, ports: list[int]) -> dict[int, str]:
    output = _run("ip", "netns", "exec", namespace, sys.executable, "-c", _PROBE, OUTSIDER, "-",
                  json.dumps([(address, port, False) for port in ports]))
    return {int(port): result for port, result in json.loads(output).items()}


def test_two_hosts_form_a_ray_cluster_that_admits_only_its_peers(ray_hosts):
    head, worker = ray_hosts["head"], ray_hosts["worker"]
    env = {"DEEPFLEET_HOSTS_FILE": str(ray_hosts["root"] / "inventory.json")}
    deploy = run_deploy(LOCAL_INVENTORY, RAY_CLUSTER_DEPLOY, env=env, echo=False)
    assert deploy.failed_hosts == [], deploy.log[-3000:]

    assert _wait_for_nodes(head, 2) == 2, _on(head, "journalctl", "-u", "deepfleet-ray", "-n", "60").stdout
    driver = _on(head, "runuser", "-u", SERVICE_USER, "--", PYTHON, "-c", _DRIVER, f"{HEAD}:6379", WORKER)
    assert driver.returncode == 0, driver.stderr[-3000:]
    ran = json.loads(driver.stdout.strip().splitlines()[-1])
    assert ran["nodes"] == [HEAD, WORKER] and ran["bytes"] == 8 << 20
    assert ran["ran_on"] != ran["driver_on"]  # the task ran on the worker host, its result reached the head

    # a listener on an ephemeral port of the head, as vLLM's driver opens for torch.distributed
    # (vllm/v1/executor/ray_executor.py: get_open_port()), which the workers on the peers connect to
    subprocess.run(["docker", "exec", "-d", head.container, "python3", "-c", _LISTENERS, HEAD, str(EPHEMERAL_PORT)],
                   check=True)
    assert _from_peer(worker, EPHEMERAL_PORT) == "open"

    # from an address that is no peer: nothing of Ray's, nor the ephemeral port; the gateway port,
    # which the firewall admits from it (and where nothing listens here), shows the probe gets through
    outsider = ray_hosts["namespace"]
    assert _from_outsider(outsider, HEAD, [6379, 6380, 6381, EPHEMERAL_PORT, 8443]) == {
        6379: "dropped", 6380: "dropped", 6381: "dropped", EPHEMERAL_PORT: "dropped", 8443: "refused"}
    assert _from_outsider(outsider, WORKER, [6380, 6381, 8443]) == {6380: "dropped", 6381: "dropped", 8443: "refused"}

    again = run_deploy(LOCAL_INVENTORY, RAY_CLUSTER_DEPLOY, env=env, echo=False)
    assert (again.changed, again.changed_operations) == (0, [])
    assert _active_nodes(head) == 2
