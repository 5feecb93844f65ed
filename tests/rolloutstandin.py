"""A stand-in fleet for unit tests of deepfleet/rollout.py: what the rollout sees of gateways
(`gateway-admin status|drain|undrain|probe` answers) and replicas (`release show`), kept in one
`World` that records every step in order. Converges are the test's own function (run_deploy is
replaced in deepfleet.rollout), so a test decides what a converge does to the hosts: a reboot, a
restarted gateway. For the orders and gates of rollouts that real test hosts cannot show (a GPU
driver's reboot) or that would cost CI a fleet of their own; tests/fleet/test_rollout.py runs the
same code on real hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deepfleet.deployrun import DeployResult
from deepfleet.fleet import Fleet, FleetHost

SETTINGS = {"model_name": "tiny", "rollout_drain_timeout_s": 5, "rollout_healthy_timeout_s": 30,
            "rollout_smoke_prompt": "Say hello.", "rollout_smoke_max_tokens": 8, "deepfleet_home": "/opt/deepfleet",
            "gateway_admin_socket": "/run/deepfleet-gateway/admin.sock"}


@dataclass
class World:
    """The fleet's state as the gateways and hosts report it, and every step the rollout took."""

    replicas: list[str]
    gateways: list[str]
    events: list[tuple] = field(default_factory=list)
    model: dict[str, str] = field(default_factory=dict)  # replica -> model release it serves
    down: dict[str, int] = field(default_factory=dict)  # host -> status answers left before it is back
    drained: dict[str, set[str]] = field(default_factory=dict)  # gateway -> replicas drained there
    unseen: dict[str, set[str]] = field(default_factory=dict)  # gateway -> replicas it cannot reach

    def __post_init__(self):
        self.model = {name: "1" for name in self.replicas}
        self.drained = {name: set() for name in self.gateways}

    def steps(self, host: str) -> list[tuple]:
        """The recorded steps that concern `host`."""
        return [event for event in self.events if host in event[1:]]

    def answer(self, gateway: str, args: tuple[str, ...]) -> tuple[int, dict]:
        command = args[0]
        if self.down.get(gateway):
            self.down[gateway] -= 1
            self.events.append(("unreachable", gateway))
            return 3, {"error": f"{gateway} is down"}
        if command == "status":
            upstreams = []
            for name in self.replicas:
                healthy = not self.down.get(name) and name not in self.unseen.get(gateway, ())
                if self.down.get(name):
                    self.down[name] -= 1
                    if not self.down[name]:
                        self.events.append(("back", name))
                upstreams.append({"name": name, "healthy": healthy, "draining": name in self.drained[gateway],
                                  "release": self.model[name], "last_error": None if healthy else "connect refused"})
                if healthy:
                    self.events.append(("healthy at", gateway, name))
            return 0, {"upstreams": upstreams}
        if command in ("drain", "undrain"):
            (self.drained[gateway].add if command == "drain" else self.drained[gateway].discard)(args[1])
            self.events.append((command, gateway, args[1]))
            return 0, {"outstanding": 0}
        if command == "probe":
            self.events.append(("probe", gateway, args[1]))
            return (0, {"ok": True, "content": "hello"}) if not self.down.get(args[1]) else (1, {"error": "down"})
        raise AssertionError(f"unexpected gateway-admin {args}")


@dataclass(frozen=True)
class StandInHost(FleetHost):
    world: World | None = field(default=None, hash=False, compare=False)

    def admin(self, *args: str, timeout: float = 120.0) -> tuple[int, dict]:
        assert self.gateway, f"gateway-admin on {self.name}, which is no gateway"
        return self.world.answer(self.name, args)

    def release(self) -> dict | None:
        if not self.replica:
            return None
        model = self.world.model[self.name]
        return {"id": f"release-{self.name}-{model}", "model": {"name": "tiny", "release": model}}


def stand_in_fleet(world: World) -> Fleet:
    """Hosts in inventory order: the replicas, then the gateways that are no replicas."""
    names = [*world.replicas, *[g for g in world.gateways if g not in world.replicas]]
    hosts = {name: StandInHost(name, ["ssh", name], False, name in world.gateways, name in world.replicas, (),
                               dict(SETTINGS), world=world) for name in names}
    return Fleet(Path("inventory.py"), {}, hosts)


def plan_result(changed_hosts: list[str]) -> DeployResult:
    """What a dry run of the site deploy answers when `changed_hosts` have changes."""
    return DeployResult(len(changed_hosts), [], {"Runtime config": list(changed_hosts)} if changed_hosts else {})


def done() -> DeployResult:
    return DeployResult(1, [], {"Runtime config": []})
