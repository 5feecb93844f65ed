"""A driver change that needs a reboot goes through the rollout's own path: drain at every gateway,
the converge (where the NVIDIA driver role reboots the host and pyinfra waits for it to come back
over SSH), the gate (healthy on its release at every gateway, a smoke completion through each),
then undrain. The hosts are stand-ins (tests/rolloutstandin.py: no GPU or kernel module here); the
reboot decision is the driver role's own, planned against a recorded GPU host with the environment
the rollout gives its converge."""

from __future__ import annotations

import pytest

from deepfleet import rollout as rollout_module
from deepfleet.rollout import Rollout, RolloutOptions
from roles.nvidia_driver import nvidia_driver
from tests.roles.factplan import find, load_case, plan, with_facts
from tests.rolloutstandin import World, done, plan_result, stand_in_fleet

# A GPU host serving traffic whose new driver is installed while the old module still runs.
NEEDS_REBOOT = with_facts(load_case("ubuntu2204-2xa100"), **{
    "systemd.SystemdStatus": {"*": {"deepfleet-runtime.service": True, "deepfleet-gateway.service": True}},
    "roles.gpu_facts.NvidiaModuleState": {"$output": ["loaded=550.54.15", "installed=570.133.20"]}})
BOOT_POLLS = 4  # status answers during which the rebooting replica is not back


def _driver_plan(env: dict, monkeypatch) -> dict[str, str]:
    """What the driver role plans for the reboot in the environment `env` (the one the rollout gives
    its dry run, or its converge): {"reboot" | "refused": "yes" | "conditional"}."""
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        ops = plan(NEEDS_REBOOT, nvidia_driver)
    return {("reboot" if "Reboot to load the new NVIDIA kernel module (only if" in op.name else "refused"): op.change
            for op in ops if "Reboot to load the new NVIDIA kernel module" in op.name}


def _driver_reboot_planned(env: dict, monkeypatch) -> bool:
    """Whether the driver role, in the environment the rollout gave the converge, reboots the host."""
    return _driver_plan(env, monkeypatch) == {"reboot": "yes"}


@pytest.fixture
def world(monkeypatch):
    world = World(replicas=["r1", "r2", "r3"], gateways=["g1", "g2"])
    monkeypatch.setattr(rollout_module, "POLL_S", 0.0)

    def run_deploy(inventory, deploy=None, *, dry=False, limit=(), env=None, echo=True):
        if dry:  # the plan: a replica changes when the driver role plans a definite change there
            definite = "yes" in _driver_plan(env or {}, monkeypatch).values()
            return plan_result([name for name in limit if name in world.replicas and world.model[name] == "1"
                                and definite])
        world.events.append(("converge", *limit, f"DEEPFLEET_DRAINED={env.get('DEEPFLEET_DRAINED')}"))
        for name in limit:
            if _driver_reboot_planned(env, monkeypatch):
                world.events.append(("reboot", name))
                world.down[name] = BOOT_POLLS  # the unit starts at boot; the model takes a while to load
                world.model[name] = "2"
        return done()

    monkeypatch.setattr(rollout_module, "run_deploy", run_deploy)
    return world


def test_a_driver_reboot_is_drained_first_then_gated_at_every_gateway_before_it_takes_traffic(world):
    report = Rollout(stand_in_fleet(world), RolloutOptions(batch="1"), log=lambda line: None).run()
    assert report.status == "done"
    assert [(h.name, h.outcome) for h in report.hosts] == [("r1", "updated"), ("r2", "updated"), ("r3", "updated"),
                                                           ("g1", "up to date"), ("g2", "up to date")]
    for replica in ("r1", "r2", "r3"):
        steps = world.steps(replica)
        acts = [step for step in steps if step[0] != "healthy at"]
        # drained at every gateway, then the converge (with the rollout's DRAINED flag) that reboots it;
        # it comes back, is probed through every gateway, and only then undrained at every one
        assert [a[0] for a in acts] == ["drain", "drain", "converge", "reboot", "back", "probe", "probe",
                                        "undrain", "undrain"]
        assert {a[1] for a in acts[:2]} == {a[1] for a in acts[5:7]} == {a[1] for a in acts[7:]} == {"g1", "g2"}
        assert acts[2] == ("converge", replica, "DEEPFLEET_DRAINED=1")
        # the gate: after it came back, every gateway saw it healthy before the first probe
        back, probe = steps.index(("back", replica)), steps.index(acts[5])
        assert {s[1] for s in steps[back:probe] if s[0] == "healthy at"} == {"g1", "g2"}
        assert world.model[replica] == "2"
    # one replica at a time: r2 is drained only after r1 is undrained
    events = world.events
    assert max(i for i, e in enumerate(events) if e[:1] == ("undrain",) and e[2] == "r1") < min(
        i for i, e in enumerate(events) if e[:1] == ("drain",) and e[2] == "r2")


def test_without_the_rollouts_drain_the_driver_role_refuses_to_reboot_a_serving_host(monkeypatch):
    """`deepfleet up` on a serving host stops with the refusal (telling to run `deepfleet rollout`)."""
    assert _driver_plan({}, monkeypatch) == {"refused": "yes"}
    assert _driver_plan({"DEEPFLEET_DRAINED": "1"}, monkeypatch) == {"reboot": "yes"}
    assert "deepfleet rollout" in find(plan(NEEDS_REBOOT, nvidia_driver), "refused: the host serves").shell()[0]
