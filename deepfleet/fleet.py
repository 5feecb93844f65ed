"""The fleet an inventory describes, as the workflows that act on running hosts see it (deepfleet
rollout, deepfleet status): gateways, runtime replicas (each with its Ray workers), how to run a
command on each. The roles resolve it themselves (deploys/describe.py, a pyinfra run that changes
nothing), so topology and defaults have one source.

On hosts, the workflows use `deepfleet-runtime` as root: `gateway-admin` on the gateways' admin
sockets (drain, undrain, probe, status) and `release show` on replicas.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .deployrun import DeployError, run_deploy
from .paths import PROJECT_ROOT
from .remote import RemoteError, run_remote

DESCRIBE_DEPLOY = PROJECT_ROOT / "deploys" / "describe.py"


class FleetError(RuntimeError):
    """The fleet cannot be described or reached; the message names the host and the fix."""


@dataclass(frozen=True)
class FleetHost:
    name: str
    ssh: list[str]
    sudo: bool
    gateway: bool
    replica: bool
    ray_workers: tuple[str, ...]
    settings: dict = field(hash=False)

    @property
    def runtime_cli(self) -> str:
        return f"{self.settings['deepfleet_home']}/venv/bin/deepfleet-runtime"

    def run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run `deepfleet-runtime ARGS` on this host as root."""
        return run_remote(self.ssh, [self.runtime_cli, *args], sudo=self.sudo, timeout=timeout, check=check)

    def admin(self, *args: str, timeout: float = 120.0) -> tuple[int, dict]:
        """`deepfleet-runtime gateway-admin ARGS` on this gateway: (exit status, its JSON answer)."""
        result = self.run("gateway-admin", "--socket", self.settings["gateway_admin_socket"], *args,
                          timeout=timeout, check=False)
        try:
            return result.returncode, json.loads(result.stdout)
        except ValueError:
            raise RemoteError(f"{self.name}: gateway-admin {shlex.join(args)} exited {result.returncode}: "
                              f"{(result.stderr or result.stdout).strip()[-400:]}") from None

    def release(self) -> dict | None:
        """The runtime release this host serves (its release.json), or None before the first one."""
        return json.loads(self.run("release", "show", "--root", f"{self.settings['deepfleet_home']}/releases",
                                   timeout=60).stdout)["current"]


@dataclass
class Fleet:
    inventory: Path
    env: dict
    hosts: dict[str, FleetHost]
    grouped: bool = True  # the inventory names gateways/gpu_nodes: every gateway routes to every replica

    @property
    def gateways(self) -> list[FleetHost]:
        return [h for h in self.hosts.values() if h.gateway]

    @property
    def replicas(self) -> list[FleetHost]:
        return [h for h in self.hosts.values() if h.replica]

    def members(self, replica: FleetHost) -> list[str]:
        """The hosts a replica's update converges: itself and its Ray workers."""
        return [replica.name, *replica.ray_workers]


def describe_fleet(inventory: Path, env: dict | None = None) -> Fleet:
    """Ask the roles what every host of `inventory` does (a pyinfra dry run that changes nothing)."""
    env = dict(env or {})
    with tempfile.TemporaryDirectory(prefix="deepfleet-describe-") as out:
        try:
            run_deploy(inventory, DESCRIBE_DEPLOY, dry=True, echo=False, env={**env, "DEEPFLEET_DESCRIBE_OUT": out})
        except DeployError as exc:
            raise FleetError(f"could not describe the fleet of {inventory}: {exc}") from None
        records = sorted((json.loads(path.read_text()) for path in Path(out).glob("*.json")),
                         key=lambda record: record["order"])
    hosts = {}
    for record in records:
        if record["ssh"] is None:
            raise FleetError(f"{record['name']}: the fleet workflows log in with the ssh client, which cannot "
                             "repeat a password login; use key authentication for this host")
        hosts[record["name"]] = FleetHost(record["name"], record["ssh"], record["sudo"], record["gateway"],
                                          record["replica"], tuple(record["ray_workers"]), record["settings"])
    return Fleet(inventory, env, hosts, all(record["fleet"] for record in records))
