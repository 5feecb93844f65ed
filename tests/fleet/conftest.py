"""A real test host (Debian 12, systemd, sshd) with the site deployed to it over SSH."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from deepfleet import testhosts
from deepfleet.apikeys import create_key
from deepfleet.demo import PORT_SETTINGS, write_local_inventory
from deepfleet.deployrun import DeployResult, run_deploy
from deepfleet.modelkeys import create_model_keys
from deepfleet.paths import LOCAL_INVENTORY, PROJECT_ROOT, cache_dir
from deepfleet.pki import init_ca

pytestmark = pytest.mark.fleet


@dataclass
class Site:
    fleet: testhosts.TestFleet
    inventory: Path
    ca_cert: Path
    api_key: str
    first_deploy: DeployResult

    @property
    def host(self) -> testhosts.TestHost:
        return self.fleet.hosts[0]

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.host.ports['gateway_port']}/v1"

    def deploy(self, inventory: Path | None = None, **kwargs) -> DeployResult:
        env = {"DEEPFLEET_HOSTS_FILE": str(inventory or self.inventory)}
        return run_deploy(LOCAL_INVENTORY, env=env, echo=False, **kwargs)

    def rollback(self) -> None:
        """`deepfleet rollback` of the site: how a module that deployed a newer release of another model
        puts the site's own back (a deploy rightly refuses to take back an older release, issue 19)."""
        result = subprocess.run([sys.executable, "-m", "deepfleet.cli", "rollback", str(LOCAL_INVENTORY)],
                                cwd=PROJECT_ROOT, env={**os.environ, "DEEPFLEET_HOSTS_FILE": str(self.inventory)},
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]

    def on_host(self, command: str, check: bool = True) -> str:
        """Run a shell command as root inside the test host; its stdout."""
        result = subprocess.run(["docker", "exec", self.host.container, "sh", "-c", command],
                                capture_output=True, text=True, check=check)
        return result.stdout

    def client(self) -> openai.OpenAI:
        """The openai SDK, through the gateway, trusting the site's CA."""
        http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(self.ca_cert)))
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, http_client=http, max_retries=0)

    def with_overrides(self, path: Path, **overrides) -> Path:
        """A copy of the inventory with some host data changed."""
        hosts = json.loads(self.inventory.read_text())["hosts"]
        for _, data in hosts:
            data.update(overrides)
        path.write_text(json.dumps({"hosts": hosts}))
        return path


@pytest.fixture(scope="session")
def site(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("site")
    image = testhosts.ensure_image(cache_dir() / "testhost")
    fleet = testhosts.TestFleet(root / "hosts")
    try:
        fleet.start(1, image, PORT_SETTINGS)
        ca, _ = init_ca(root / "pki")
        key = create_key(root / "keys.json", "tests")
        model_keys, _ = create_model_keys(root / "model-keys")
        write_local_inventory(root / "inventory.json", fleet, tiny_model_dir, root / "pki", root / "keys.json",
                              model_keys_dir=str(model_keys.path))
        site = Site(fleet, root / "inventory.json", ca.cert, key, None)
        site.first_deploy = site.deploy()
        yield site
    finally:
        fleet.destroy()
