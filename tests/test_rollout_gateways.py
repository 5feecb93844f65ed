"""Gateway-only hosts in `deepfleet rollout` (deepfleet/rolloutgateways.py): rolled after the
replicas, each alone, only while another gateway serves, gated before the next one restarts.
Stand-in hosts (tests/rolloutstandin.py) answer what the gateways' admin sockets would; a
converge of a gateway restarts it (its admin socket does not answer for a while, its drains are
forgotten). tests/fleet/test_rollout.py rolls a real gateway-only host under failover clients."""

from __future__ import annotations

import pytest

from deepfleet import rollout as rollout_module
from deepfleet import rolloutgateways
from deepfleet.rollout import Rollout, RolloutOptions, RolloutRefused
from tests.rolloutstandin import World, done, plan_result, stand_in_fleet

RESTART_POLLS = 3  # admin-socket answers a restarting gateway misses


def _fleet(monkeypatch, gateways: list[str], changed: list[str]) -> World:
    world = World(replicas=["r1", "r2"], gateways=gateways)
    monkeypatch.setattr(rollout_module, "POLL_S", 0.0)
    monkeypatch.setattr(rolloutgateways, "POLL_S", 0.0)

    def run_deploy(inventory, deploy=None, *, dry=False, limit=(), env=None, echo=True):
        if dry:
            return plan_result([name for name in limit if name in changed])
        world.events.append(("converge", *limit))
        for name in limit:
            if name in world.gateways:  # the site deploy restarts the gateway for its new config
                world.down[name] = RESTART_POLLS
                world.drained[name] = set()
            if name in world.replicas:
                world.model[name] = "2"
        return done()

    monkeypatch.setattr(rollout_module, "run_deploy", run_deploy)
    return world


def test_gateway_only_hosts_are_rolled_after_the_replicas_one_at_a_time_each_gated(monkeypatch):
    world = _fleet(monkeypatch, ["g1", "g2"], changed=["r1", "r2", "g1", "g2"])
    report = Rollout(stand_in_fleet(world), RolloutOptions(batch="1"), log=lambda line: None).run()
    assert report.status == "done"
    assert [(h.name, h.outcome, h.batch, h.step) for h in report.hosts] == [
        ("r1", "updated", 1, "undrain"), ("r2", "updated", 2, "undrain"),
        ("g1", "updated", 3, "verify"), ("g2", "updated", 4, "verify")]
    events = world.events
    converges = [e for e in events if e[0] == "converge"]
    assert converges == [("converge", "r1"), ("converge", "r2"), ("converge", "g1"), ("converge", "g2")]
    last_undrain = max(i for i, e in enumerate(events) if e[0] == "undrain")
    assert last_undrain < events.index(("converge", "g1"))  # no replica drained while a gateway restarts
    for gateway, other, after in (("g1", "g2", "r2"), ("g2", "g1", "g1")):
        start = max(i for i, e in enumerate(events) if e[0] == "converge" and e[1] == after) + 1
        converge = events.index(("converge", gateway))
        # the other gateway was seen serving both replicas right before this one restarted
        assert {e[2] for e in events[start:converge] if e[:2] == ("healthy at", other)} == {"r1", "r2"}
        following = [e for e in events[converge + 1:]]
        end = next((i for i, e in enumerate(following) if e[0] == "converge"), len(following))
        gate = following[:end]
        # the restarted gateway did not answer for a while, then saw both replicas healthy, then a smoke
        # completion went through it, all before the next gateway's converge
        assert gate[0] == ("unreachable", gateway)
        first_probe = gate.index(next(e for e in gate if e[0] == "probe"))
        assert {e[2] for e in gate[:first_probe] if e[:2] == ("healthy at", gateway)} == {"r1", "r2"}
        assert gate[first_probe][:2] == ("probe", gateway)


def test_the_fleets_only_gateway_is_refused_before_anything_changes(monkeypatch):
    world = _fleet(monkeypatch, ["g1"], changed=["r1", "g1"])
    with pytest.raises(RolloutRefused, match=r"gateway g1 has changes and is the fleet's only gateway: .*"
                                             r"`deepfleet up INVENTORY --limit g1`"):
        Rollout(stand_in_fleet(world), RolloutOptions(batch="1"), log=lambda line: None).run()
    assert [e for e in world.events if e[0] in ("converge", "drain")] == []


def test_a_gateway_is_not_restarted_while_the_other_serves_no_replica(monkeypatch):
    world = _fleet(monkeypatch, ["g1", "g2"], changed=["g1"])
    world.unseen["g2"] = {"r1", "r2"}  # g2 reaches no replica: clients of g2 are not served now
    report = Rollout(stand_in_fleet(world), RolloutOptions(batch="1"), log=lambda line: None).run()
    assert report.status == "halted"
    (g1,) = [h for h in report.hosts if h.name == "g1"]
    assert (g1.outcome, g1.step) == ("failed", "check")
    assert "gateway g2 has 0 healthy replica(s) of tiny in service (--min-serving 1)" in g1.detail
    assert [e for e in world.events if e[0] == "converge"] == []


def test_a_rollback_of_a_rollout_leaves_gateways_alone(monkeypatch):
    world = _fleet(monkeypatch, ["g1", "g2"], changed=[])
    world.model["r1"] = "2"
    report = Rollout(stand_in_fleet(world), RolloutOptions(), log=lambda line: None, targets={"r1": "release-r1-1"},
                     groups=[["r1"]]).run()
    assert [h.name for h in report.hosts] == ["r1", "r2"]  # a gateway has no release to go back to
