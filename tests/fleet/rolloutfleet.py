"""The fleet of tests/fleet/test_rollout.py and what its tests drive it with: the hosts and their
inventory, `deepfleet` commands, streaming clients as load, a replica fault (a stand-in server)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deepfleet import testhosts
from deepfleet.client import GatewayClient
from deepfleet.demo import MODEL_NAME, write_local_inventory
from deepfleet.paths import LOCAL_INVENTORY, PROJECT_ROOT, cache_dir

GROUPS = {"gateways": ["h1", "h2", "h4"], "gpu_nodes": ["h1", "h2", "h3"]}  # h4: a gateway-only host
PROMPT = "Tell the fleet a story"
RUNTIME = "/opt/deepfleet/venv/bin/deepfleet-runtime"


@dataclass
class Fleet:
    hosts: testhosts.TestFleet
    root: Path
    ca_cert: Path
    api_key: str
    inventory: Path
    overrides: dict = field(default_factory=dict)  # host data for every host
    timings: dict = field(default_factory=dict)

    def write_inventory(self, per_host: dict[str, dict] | None = None, groups: dict | None = None) -> Path:
        """The hosts file with the fleet's settings, `overrides` and per-host data (and `groups`,
        by default GROUPS)."""
        write_local_inventory(self.inventory, self.hosts, self.root / "model-v1", self.root / "pki",
                              self.root / "keys.json", groups=groups or GROUPS,
                              model_keys_dir=str(self.root / "model-keys"), **self.overrides)
        document = json.loads(self.inventory.read_text())
        for name, data in document["hosts"]:
            data.update((per_host or {}).get(name, {}))
        self.inventory.write_text(json.dumps(document))
        return self.inventory

    def deepfleet(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        env = {**os.environ, "DEEPFLEET_HOSTS_FILE": str(self.inventory), "DEEPFLEET_HOME": str(self.root / "state"),
               "DEEPFLEET_CACHE": str(cache_dir())}
        command = [str(Path(sys.executable).parent / "deepfleet"), *args, str(LOCAL_INVENTORY)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=PROJECT_ROOT)

    def start(self, *args: str) -> tuple[subprocess.Popen, Path]:
        """`deepfleet ARGS INVENTORY` in the background; its stderr (the progress) goes to the file."""
        env = {**os.environ, "DEEPFLEET_HOSTS_FILE": str(self.inventory), "DEEPFLEET_HOME": str(self.root / "state"),
               "DEEPFLEET_CACHE": str(cache_dir())}
        command = [str(Path(sys.executable).parent / "deepfleet"), *args, str(LOCAL_INVENTORY)]
        progress = self.root / f"progress-{time.monotonic_ns()}.log"
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=progress.open("w"), text=True, env=env,
                                   cwd=PROJECT_ROOT)
        return process, progress

    def upstreams(self, gateway: str) -> list[tuple]:
        status = json.loads(self.on(gateway, f"{RUNTIME} gateway-admin status"))["upstreams"]
        return [(u["name"], u["healthy"], u["draining"]) for u in status]

    def on(self, host: str, command: str) -> str:
        container = next(h.container for h in self.hosts.hosts if h.name == host)
        return subprocess.run(["docker", "exec", container, "sh", "-c", command], capture_output=True, text=True,
                              check=True).stdout

    def release(self, host: str) -> dict:
        return json.loads(self.on(host, "cat /opt/deepfleet/releases/current/release.json"))

    def runtime_pid(self, host: str) -> str:
        return self.on(host, "systemctl show -p MainPID --value deepfleet-runtime").strip()

    def probe(self, gateway: str, replica: str) -> str:
        """A greedy completion through `gateway` to `replica` (the rollout's smoke test)."""
        answer = json.loads(self.on(gateway, f"{RUNTIME} gateway-admin probe {replica} --model {MODEL_NAME} "
                                             f"--prompt '{PROMPT}' --max-tokens 12"))
        assert answer["ok"], answer
        return answer["content"]

    def base_url(self, gateway: str) -> str:
        host = next(h for h in self.hosts.hosts if h.name == gateway)
        return f"https://127.0.0.1:{host.ports['gateway_port']}/v1"


def greedy(model_dir: Path) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    return tokenizer.decode(output[0, len(prompt):], skip_special_tokens=True)


class Load:
    """Four streaming openai clients, two per gateway, asking without pause; every failure is kept."""

    def __init__(self, fleet: Fleet):
        context = ssl.create_default_context(cafile=str(fleet.ca_cert))
        self.clients = [openai.OpenAI(base_url=fleet.base_url(gateway), api_key=fleet.api_key, max_retries=0,
                                      http_client=openai.DefaultHttpxClient(verify=context), timeout=120)
                        for gateway in ("h1", "h2", "h1", "h2")]
        self.stop, self.done, self.failures = threading.Event(), 0, []
        self.threads = [threading.Thread(target=self._ask, args=(client,), daemon=True) for client in self.clients]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)

    def _ask(self, client: openai.OpenAI) -> None:
        while not self.stop.is_set():
            try:
                stream = client.chat.completions.create(model=MODEL_NAME, max_tokens=16, stream=True,
                                                        messages=[{"role": "user", "content": "Hello fleet"}])
                chunks = [chunk for chunk in stream]
                if not any(c.choices and c.choices[0].finish_reason for c in chunks):
                    raise AssertionError("the stream ended without a finish reason")
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - every failure a client sees counts
                self.failures.append(f"{type(exc).__name__}: {exc}")


class FailoverLoad(Load):
    """Four streaming clients of deepfleet's own client, each given every gateway (h1, h2 and h4
    first in turn): a gateway restarting is left for the others."""

    def __init__(self, fleet: Fleet):
        h1, h2, h4 = (fleet.base_url(gateway) for gateway in ("h1", "h2", "h4"))
        self.clients = [GatewayClient(order, fleet.api_key, fleet.ca_cert, MODEL_NAME, max_retries=0, timeout_s=120)
                        for order in ([h1, h2, h4], [h2, h4, h1], [h4, h1, h2], [h4, h2, h1])]
        self.stop, self.done, self.failures = threading.Event(), 0, []
        self.threads = [threading.Thread(target=self._ask, args=(client,), daemon=True) for client in self.clients]

    def _ask(self, client: GatewayClient) -> None:
        while not self.stop.is_set():
            try:
                list(client.chat_stream("Hello fleet", max_tokens=16))
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - every failure a client sees counts
                self.failures.append(f"{type(exc).__name__}: {exc}")


FAULT = """
import json, ssl, sys, yaml
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
config = yaml.safe_load(open("/opt/deepfleet/releases/current/runtime.yaml"))
ready = json.dumps(json.loads(sys.argv[1]) | {"status": "ready"}).encode()
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.answer(200, ready)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer(500, b'{"error": {"message": "injected fault"}}')
server = ThreadingHTTPServer((config["server"]["host"], config["server"]["port"]), Handler)
if config.get("tls"):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    tls.load_cert_chain(config["tls"]["cert"], config["tls"]["key"])
    tls.load_verify_locations(config["tls"]["client_ca"])
    tls.verify_mode = ssl.CERT_REQUIRED
    server.socket = tls.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""
