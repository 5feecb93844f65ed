"""Gateways for the tests: real TLS listeners (plus metrics and admin socket) in front of real
runtime servers, configured through the same gateway.yaml loader the service uses."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from deepfleet.apikeys import create_key, host_key_file, load_keyring
from deepfleet.pki import ensure_server_cert, init_ca
from deepfleet_runtime.gateway.app import Gateway
from deepfleet_runtime.gateway.config import load_gateway_config
from deepfleet_runtime.gateway.connections import build_gateway_server
from deepfleet_runtime.serving import SideServer, serve_with_side_servers, tcp_listener, unix_listener
from tests.conftest import free_port

RUNTIME_COMMAND = str(Path(sys.executable).parent / "deepfleet-runtime")


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def gateway_pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("gateway-pki")
    ca, _ = init_ca(root)
    server, _ = ensure_server_cert(root, "gw", ["localhost", "127.0.0.1"])
    return Pki(root, ca.cert, server.cert, server.key)


@dataclass
class GatewaySite:
    """Where a test gateway lives and how to talk to it."""

    root: Path
    port: int
    pki: Pki
    config_path: Path
    keys: dict[str, str] = field(default_factory=dict)  # name -> key
    gateway: Gateway | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def keyring(self) -> Path:
        return self.root / "keyring.json"

    @property
    def keys_file(self) -> Path:
        return self.root / "api_keys.json"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca))

    def openai(self, key_name: str = "tester", key: str | None = None) -> openai.OpenAI:
        """The real openai SDK over TLS with the CA bundle (close it: idle TLS clients slow shutdown)."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.keys[key_name], max_retries=0,
                             http_client=openai.DefaultHttpxClient(verify=self.tls()))

    def http(self, key_name: str | None = "tester", **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key_name]}"} if key_name else {}
        return httpx.Client(base_url=self.url, verify=self.tls(), headers=headers, timeout=60, **kwargs)

    def add_key(self, name: str, **limits) -> str:
        self.keys[name] = create_key(self.keyring, name, **limits)
        self.publish_keys()
        return self.keys[name]

    def publish_keys(self) -> None:
        """What a deploy does: replace the host key file atomically."""
        staged = self.keys_file.with_suffix(".tmp")
        staged.write_text(host_key_file(load_keyring(self.keyring)))
        staged.replace(self.keys_file)


def audit_records(site: GatewaySite, timeout_s: float = 5.0) -> list[dict]:
    """The records on disk once every "started" one has its end record (an end record is written
    with the next batch, or within audit.DEFER_S): for reading them with no request in flight."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = [json.loads(line) for path in sorted(site.audit_dir.glob("audit-*.jsonl"))
                       for line in path.read_text().splitlines()]
        except ValueError:  # a batch being written: read again
            records = None
        if records is not None:
            started = {r["request_id"] for r in records if r.get("type") == "started"}
            if started <= {r.get("request_id") for r in records if r.get("type") == "request"}:
                return records
        if time.monotonic() > deadline:
            raise AssertionError(f"end records missing after {timeout_s} s")
        time.sleep(0.01)


def write_gateway(root: Path, pki: Pki, upstreams: list[dict], keys: dict[str, dict], **sections) -> GatewaySite:
    """Keys and gateway.yaml for a gateway in `root`; `sections` override parts of the config."""
    root.mkdir(parents=True, exist_ok=True)
    site = GatewaySite(root, free_port(), pki, root / "gateway.yaml")
    for name, limits in keys.items():
        site.keys[name] = create_key(site.keyring, name, **limits)
    site.publish_keys()
    config = {
        "listen": {"host": "127.0.0.1", "port": site.port},
        "tls": {"cert": str(pki.cert), "key": str(pki.key)},
        "api_keys_file": str(site.keys_file),
        "upstreams": upstreams,
        "audit": {"dir": str(site.audit_dir)},
        "routing": {"health_interval_s": 0.5, "backoff_base_s": 0.01},
        "limits": {"max_tokens": 64, "default_max_tokens": 16},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "admin_socket": str(site.admin_socket),
    }
    for name, value in sections.items():
        config[name] = {**config[name], **value} if isinstance(value, dict) and isinstance(config.get(name), dict) else value
    site.config_path.write_text(yaml.safe_dump(config))
    return site


@contextlib.contextmanager
def running_gateway(site: GatewaySite):
    """Run the gateway of `site` in this process (a thread with its own event loop), as the
    `deepfleet-runtime gateway` command runs it: TLS listener, metrics listener, admin socket."""
    config = load_gateway_config(site.config_path)
    site.gateway = Gateway(config)
    main, site.gateway.connections = build_gateway_server(site.gateway.app, config)
    side = [SideServer(site.gateway.metrics_app, tcp_listener(config.metrics.host, config.metrics.port)),
            SideServer(site.gateway.admin_app, unix_listener(config.admin_socket))]
    thread = threading.Thread(target=serve_with_side_servers, args=(main, side), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not main.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    try:
        yield site
    finally:
        main.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the gateway did not shut down"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, gateway_pki, runtime_url):
    """One gateway in front of the session's runtime, keys without tight limits."""
    site = write_gateway(tmp_path_factory.mktemp("gateway"), gateway_pki, [{"url": runtime_url, "name": "r1"}],
                         {"tester": {}, "hashed": {"audit_content": "sha256"}, "tiny-only": {"models": ["tiny"]},
                          "other-model": {"models": ["another-model"]}})
    with running_gateway(site):
        yield site


@dataclass
class RuntimeProcess:
    """A `deepfleet-runtime serve` replica as its own process (so a test can kill it)."""

    process: subprocess.Popen
    url: str

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@contextlib.contextmanager
def runtime_process(root: Path, model_dir: Path):
    """Start a runtime replica serving the tiny model as "tiny"; wait until it is ready."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"model": {"name": "tiny", "path": str(model_dir)}, "server": {"host": "127.0.0.1", "port": port},
              "limits": {"max_prompt_tokens": 256, "max_tokens": 64, "default_max_tokens": 16}}
    (root / "runtime.yaml").write_text(yaml.safe_dump(config))
    log = open(root / "runtime.log", "wb")
    process = subprocess.Popen([RUNTIME_COMMAND, "serve", "--config", str(root / "runtime.yaml")],
                               stdout=log, stderr=subprocess.STDOUT)
    replica = RuntimeProcess(process, f"http://127.0.0.1:{port}")
    try:
        wait_until_ready(f"{replica.url}/ready", process, root / "runtime.log")
        yield replica
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        log.close()


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 120, **kwargs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2, **kwargs).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")
