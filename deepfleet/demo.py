"""`deepfleet demo`: one disposable local host, deployed with the real site deploy, answering.

Everything the demo creates lives under <state>/demo/ (host containers' keys and config, the
demo CA, the demo API keyring, connection.json) plus the containers themselves; `--down`
removes exactly that. Caches (<state>/cache: the test host image's debs, wheelhouses, the tiny
model) and the test host image stay, so the next demo starts quickly.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from . import apikeys, pki, testhosts
from .atomicfile import write_atomic
from .deployrun import run_deploy
from .modelkeys import create_model_keys
from .paths import LOCAL_INVENTORY, PROJECT_ROOT, cache_dir, state_dir

MODEL_NAME = "tiny-deepseek-v3"
KEY_NAME = "demo"
PORT_SETTINGS = ("runtime_port", "gateway_port", "gateway_metrics_port",  # hosts share this network
                 "gateway_limits_store_port")


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def hosts(self) -> Path:
        return self.root / "hosts"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def keyring(self) -> Path:
        return self.root / "api-keys.json"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.json"

    @property
    def connection(self) -> Path:
        return self.root / "connection.json"


def demo_paths() -> DemoPaths:
    return DemoPaths(state_dir() / "demo")


def demo_up(log=print) -> dict:
    """Start (or reuse) the demo host, deploy the site to it, ask it one question; returns a summary."""
    paths = demo_paths()
    started = time.monotonic()
    image = testhosts.ensure_image(cache_dir() / "testhost", log=log)
    fleet = testhosts.TestFleet.load(paths.hosts)
    if fleet and not fleet.running():
        log("the previous demo host is gone; starting a new one")
        fleet.destroy()
        fleet = None
    if fleet is None:
        fleet = testhosts.TestFleet(paths.hosts)
        fleet.start(1, image, PORT_SETTINGS)
        log(f"started local host {fleet.hosts[0].name} (container {fleet.hosts[0].container})")
    model_dir = ensure_tiny_model(cache_dir() / "models" / MODEL_NAME, log)
    pki.init_ca(paths.pki, common_name="deepfleet demo CA")
    model_keys, _ = create_model_keys(paths.root / "model-keys")
    api_key = _demo_api_key(paths)
    write_local_inventory(paths.inventory, fleet, model_dir, paths.pki, paths.keyring,
                          model_keys_dir=str(model_keys.path))
    log(f"deploying deploys/site.py to the local host with {LOCAL_INVENTORY.relative_to(LOCAL_INVENTORY.parents[1])}")
    result = run_deploy(LOCAL_INVENTORY, env={"DEEPFLEET_HOSTS_FILE": str(paths.inventory)})
    host = fleet.hosts[0]
    connection = {
        "base_url": f"https://127.0.0.1:{host.ports['gateway_port']}/v1",
        "ca_cert": str(paths.pki / "ca.crt"),
        "api_key": api_key,
        "model": MODEL_NAME,
    }
    write_atomic(paths.connection, json.dumps(connection, indent=1) + "\n", mode=0o600)
    answer = ask(connection, "Say hello to the fleet.")
    return {"endpoint": connection["base_url"], "ca_cert": connection["ca_cert"],
            "connection_file": str(paths.connection), "model": MODEL_NAME, "changes": result.changed,
            "changed_operations": result.changed_operations, "answer": answer,
            "seconds": round(time.monotonic() - started, 1)}


def write_local_inventory(path: Path, fleet: testhosts.TestFleet, model_dir: Path, pki_dir: Path,
                          keyring: Path, groups: dict[str, list[str]] | None = None, **overrides) -> None:
    """The hosts file inventories/local.py reads: the fleet's hosts with the demo's settings (and
    `groups`, e.g. {"gateways": ["h1"], "gpu_nodes": ["h1", "h2"]}, for a fleet)."""
    extra = {
        "model_name": MODEL_NAME,
        "model_source": str(model_dir),
        "deepfleet_cache_dir": str(cache_dir()),
        "gateway_pki_dir": str(pki_dir),
        "gateway_api_keyring": str(keyring),
        "gateway_listen_address": "127.0.0.1",
        **overrides,
    }
    document = {"hosts": fleet.inventory_hosts(extra), **({"groups": groups} if groups else {})}
    write_atomic(path, json.dumps(document, indent=1) + "\n", mode=0o600)


def demo_down(log=print) -> None:
    """Remove the demo's containers and everything under <state>/demo."""
    paths = demo_paths()
    fleet = testhosts.TestFleet.load(paths.hosts)
    if fleet:
        containers = ", ".join(host.container for host in fleet.hosts)
        fleet.destroy()
        log(f"removed the demo host ({containers})")
    shutil.rmtree(paths.root, ignore_errors=True)
    log(f"removed {paths.root} (caches in {cache_dir()} and the test host image are kept)")


def ensure_tiny_model(model_dir: Path, log=print, options: tuple[str, ...] = ()) -> Path:
    """The tiny DeepSeek-V3 model, built once by `deepfleet-runtime tiny-model` (seeded, so reproducible).

    The model lives in `<model_dir>-<digest>`, keyed by the builder's source, its `options` (more
    `tiny-model` arguments, e.g. ("--tokenizer", "deepseek-r1")) and the transformers version, so
    a shared cache never serves a model an older builder made. A build racing another one for the
    same directory keeps theirs.
    """
    model_dir = model_dir.with_name(f"{model_dir.name}-{_tiny_model_digest(options)}")
    if (model_dir / "config.json").exists():
        return model_dir
    command = shutil.which("deepfleet-runtime", path=str(Path(sys.executable).parent)) or "deepfleet-runtime"
    log(f"building the tiny DeepSeek-V3 model in {model_dir}")
    result = subprocess.run([command, "tiny-model", "--out", str(model_dir), *options],
                            capture_output=True, text=True)
    if result.returncode != 0 and not (model_dir / "config.json").exists():
        raise RuntimeError("building the tiny model failed; this venv needs deepfleet-runtime[transformers] "
                           f"(`make demo` installs it):\n{result.stderr[-2000:]}")
    return model_dir


def _tiny_model_digest(options: tuple[str, ...]) -> str:
    try:
        transformers_version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        transformers_version = "absent"
    source = (PROJECT_ROOT / "runtime" / "deepfleet_runtime" / "tinymodel.py").read_bytes()
    key = json.dumps([hashlib.sha256(source).hexdigest(), list(options), transformers_version])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def ask(connection: dict, question: str, max_tokens: int = 32) -> str:
    """One chat completion through the gateway, verified against the demo CA."""
    response = requests.post(
        f"{connection['base_url']}/chat/completions",
        json={"model": connection["model"], "messages": [{"role": "user", "content": question}],
              "max_tokens": max_tokens},
        headers={"Authorization": f"Bearer {connection['api_key']}"},
        verify=connection["ca_cert"],
        timeout=120,
    )
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def _demo_api_key(paths: DemoPaths) -> str:
    """The demo's API key: reused from connection.json while the keyring still knows it."""
    if paths.connection.exists():
        key = json.loads(paths.connection.read_text()).get("api_key", "")
        known = {record["sha256"] for record in apikeys.load_keyring(paths.keyring)}
        if key and apikeys.hash_api_key(key) in known:
            return key
    paths.keyring.unlink(missing_ok=True)
    return apikeys.create_key(paths.keyring, KEY_NAME)
