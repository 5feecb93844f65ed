"""The firewall role on a test host with its own network namespace (never this machine's network):
the site deployed with firewall_enabled, probed from a second namespace the test made.

    client namespace dfw-<id>               test host (container, --network none)
    10.251.0.2 (allowed), 10.251.0.3  <--veth-->  10.251.0.1: gateway 8443, probes on the SSH,
                                                              runtime and metrics ports, and 5555
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from deepfleet import testhosts
from deepfleet.apikeys import create_key
from deepfleet.deployrun import run_deploy
from deepfleet.demo import MODEL_NAME
from deepfleet.modelkeys import create_model_keys
from deepfleet.paths import LOCAL_INVENTORY, cache_dir
from deepfleet.pki import init_ca

pytestmark = pytest.mark.fleet

HOST_ADDRESS, ALLOWED, DISALLOWED = "10.251.0.1", "10.251.0.2", "10.251.0.3"
PORTS = {"runtime_port": 8000, "gateway_port": 8443, "gateway_metrics_port": 9464}
OTHER_PORT = 5555

# Runs inside the client namespace: connect from a source address, say what happened.
_PROBE = textwrap.dedent("""
    import json, socket, ssl, sys
    source, cafile, targets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    results = {}
    for host, port, tls in targets:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(2)
        try:
            sock.connect((host, port))
            if tls:
                context = ssl.create_default_context(cafile=cafile)
                with context.wrap_socket(sock, server_hostname=host) as conn:
                    conn.sendall(b"GET /health HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
                    results[port] = conn.recv(100).split(b"\\r\\n")[0].decode()
            else:
                results[port] = "open"
        except socket.timeout:
            results[port] = "dropped"
        except ConnectionRefusedError:
            results[port] = "refused"
        finally:
            sock.close()
    print(json.dumps(results))
""")

# Runs inside the test host: accept and close on the given ports of its network address.
_LISTENERS = textwrap.dedent("""
    import socket, sys, threading
    def serve(port):
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((sys.argv[1], port))
        server.listen(8)
        while True:
            server.accept()[0].close()
    for port in map(int, sys.argv[2:]):
        threading.Thread(target=serve, args=(port,)).start()
""")


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def walled_host(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("firewall")
    fleet = testhosts.TestFleet(root / "hosts")
    namespace = None
    try:
        fleet.start(1, testhosts.ensure_image(cache_dir() / "testhost"), name_prefix="fw", network="none")
        host = fleet.hosts[0]
        pid = _run("docker", "inspect", "-f", "{{.State.Pid}}", host.container).strip()
        namespace = f"dfw-{fleet.fleet_id}"
        _run("ip", "netns", "add", namespace)
        # The veth pair is created inside our namespace, its peer moved straight into the host's:
        # this machine's own network namespace gets no link, address or rule.
        _run("ip", "-n", namespace, "link", "add", "dfc0", "type", "veth", "peer", "name", "eth1", "netns", pid)
        for address in (ALLOWED, DISALLOWED):
            _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "dfc0")
        _run("ip", "-n", namespace, "link", "set", "dfc0", "up")
        _run("docker", "exec", host.container, "sh", "-c",
             f"ip addr add {HOST_ADDRESS}/24 dev eth1 && ip link set eth1 up")
        probe_ports = [host.ssh_port, PORTS["runtime_port"], PORTS["gateway_metrics_port"], OTHER_PORT]
        _run("docker", "exec", "-d", host.container, "python3", "-c", _LISTENERS, HOST_ADDRESS,
             *map(str, probe_ports))
        ca, _ = init_ca(root / "pki")
        create_key(root / "keys.json", "tests")
        model_keys, _ = create_model_keys(root / "model-keys")
        data = {"model_name": MODEL_NAME, "model_source": str(tiny_model_dir), "deepfleet_cache_dir": str(cache_dir()),
                "model_keys_dir": str(model_keys.path),
                "gateway_pki_dir": str(root / "pki"), "gateway_api_keyring": str(root / "keys.json"),
                "gateway_server_names": [HOST_ADDRESS], "firewall_enabled": True,
                "firewall_ssh_port": host.ssh_port, "firewall_ssh_sources": [f"{ALLOWED}/32"],
                "firewall_gateway_sources": [f"{ALLOWED}/32"], **PORTS}
        (root / "inventory.json").write_text(json.dumps({"hosts": [[f"@docker/{host.container}", data]]}))
        yield {"root": root, "namespace": namespace, "ca": ca.cert, "host": host, "probe_ports": probe_ports}
    finally:
        if namespace:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        fleet.destroy()


def _probe(host, source: str, targets) -> dict[int, str]:
    output = _run("ip", "netns", "exec", host["namespace"], sys.executable, "-c", _PROBE, source, str(host["ca"]),
                  json.dumps(targets))
    return {int(port): result for port, result in json.loads(output).items()}


def test_only_ssh_and_the_gateway_are_reachable_from_another_namespace(walled_host):
    ssh, runtime, metrics, other = walled_host["probe_ports"]
    before = _probe(walled_host, ALLOWED, [(HOST_ADDRESS, port, False) for port in walled_host["probe_ports"]])
    assert set(before.values()) == {"open"}  # without the firewall the listeners answer: the probe works

    env = {"DEEPFLEET_HOSTS_FILE": str(walled_host["root"] / "inventory.json")}
    deploy = run_deploy(LOCAL_INVENTORY, env=env, echo=False)
    assert deploy.failed_hosts == []

    after = _probe(walled_host, ALLOWED, [(HOST_ADDRESS, port, False) for port in (ssh, runtime, metrics, other)]
                   + [(HOST_ADDRESS, PORTS["gateway_port"], True)])
    assert after == {ssh: "open", runtime: "dropped", metrics: "dropped", other: "dropped",
                     PORTS["gateway_port"]: "HTTP/1.1 200 OK"}
    from_elsewhere = _probe(walled_host, DISALLOWED, [(HOST_ADDRESS, ssh, False), (HOST_ADDRESS, PORTS["gateway_port"], False)])
    assert from_elsewhere == {ssh: "dropped", PORTS["gateway_port"]: "dropped"}

    again = run_deploy(LOCAL_INVENTORY, env=env, echo=False)
    assert (again.changed, again.changed_operations) == (0, [])
