"""Gateway-only hosts (in the inventory's `gateways` group, serving no replica) in `deepfleet rollout`:
each is a batch of its own, after the replicas' batches, one at a time while the other gateways serve
(a gateway on a replica's host goes with that replica's batch: deepfleet/rollout.py).

    check     every other gateway answers and keeps --min-serving healthy replicas of each model in
              service: clients that know several gateways (docs/rollout.md) are served meanwhile
    converge  the site deploy on this host alone: its gateway restarts gracefully when its config
              changed (requests in flight finish; new connections are refused, and go to the others)
    verify    its admin socket answers and it sees every replica that serves at the other gateways
              healthy and in service, within rollout_healthy_timeout_s; then a smoke completion
              through it to a replica of each model

A gateway has no release to go back to: one that fails stops the rollout (its budget counts it) and
the others go on serving; the fix is the inventory's, then `--resume`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .fleet import Fleet, FleetHost
from .remote import RemoteError
from .rolloutrecord import HostResult

POLL_S = 1.0


def gateway_only(fleet: Fleet) -> list[FleetHost]:
    """The gateways that are neither replicas nor Ray workers of one, in inventory order."""
    members = {name for replica in fleet.replicas for name in fleet.members(replica)}
    return [g for g in fleet.gateways if g.name not in members]


def roll_gateway(fleet: Fleet, gateway: FleetHost, result: HostResult, min_serving: int,
                 converge: Callable[[], str | None], log: Callable[[str], None]) -> bool:
    """Update `gateway` (converge() runs the site deploy on it alone: None, or why it failed), keeping
    `result` (step, outcome, detail, seconds); False when it failed."""
    started = time.monotonic()

    def at(step: str) -> None:
        result.step = step

    try:
        failure = _roll(fleet, gateway, min_serving, converge, log, at)
    except KeyboardInterrupt:
        result.detail = f"interrupted at {result.step}" + (
            "; converged, not verified: look at it (deepfleet status)" if result.step == "verify" else "")
        raise
    finally:
        result.seconds = round(time.monotonic() - started, 1)
    if failure:
        result.outcome, result.step = "failed", failure[0]
        result.detail = f"{failure[1]} (a gateway has no release to go back to; the other gateways serve)"
        log(f"{gateway.name} failed at {failure[0]}: {failure[1]}")
        return False
    result.outcome = "updated"
    log(f"{gateway.name}: sees every serving replica and answered a smoke completion")
    return True


def _roll(fleet: Fleet, gateway: FleetHost, min_serving: int, converge: Callable[[], str | None],
          log: Callable[[str], None], at: Callable[[str], None]) -> tuple[str, str] | None:
    """check, converge, verify: (step, why) when one failed, or None."""
    others = [g for g in fleet.gateways if g.name != gateway.name]
    at("check")
    models = {r.name: r.settings["model_name"] for r in fleet.replicas}
    serving: set[str] = set(models)
    for other in others:
        state = _status(other)
        if state is None:
            return "check", f"gateway {other.name} does not answer: it would leave clients no gateway meanwhile"
        mine = {u["name"] for u in state["upstreams"] if u["healthy"] and not u["draining"]}
        for model in sorted(set(models.values())):
            left = [name for name in mine if models.get(name) == model]
            if len(left) < min_serving:
                return "check", (f"gateway {other.name} has {len(left)} healthy replica(s) of {model} in service "
                                 f"(--min-serving {min_serving}): it would not serve clients while {gateway.name} "
                                 "restarts; fix it first")
        serving &= mine
    log(f"{gateway.name}: the other gateways ({', '.join(g.name for g in others)}) serve; converging it")
    at("converge")
    problem = converge()
    if problem:
        return "converge", problem
    at("verify")
    return _verify(gateway, sorted(serving), models)


def _status(gateway: FleetHost) -> dict | None:
    try:
        code, state = gateway.admin("status")
    except RemoteError:
        return None
    return state if code == 0 and "upstreams" in state else None


def _verify(gateway: FleetHost, expected: list[str], models: dict[str, str]) -> tuple[str, str] | None:
    """The restarted gateway sees every replica in `expected` healthy and in service, then answers a
    smoke completion through it to one replica of each model."""
    timeout = gateway.settings["rollout_healthy_timeout_s"]
    deadline = time.monotonic() + timeout
    missing = expected
    while True:
        state = _status(gateway)
        if state is not None:
            seen = {u["name"] for u in state["upstreams"] if u["healthy"] and not u["draining"]}
            missing = [name for name in expected if name not in seen]
            if not missing:
                break
        if time.monotonic() > deadline:
            why = "its admin socket does not answer" if state is None else \
                f"it does not see {', '.join(missing)} healthy and in service"
            return "verify", f"{why} after {timeout} s"
        time.sleep(POLL_S)
    for model in sorted({models[name] for name in expected}):
        replica = next(name for name in expected if models[name] == model)
        code, answer = gateway.admin("probe", replica, "--model", model, "--prompt",
                                     gateway.settings["rollout_smoke_prompt"], "--max-tokens",
                                     str(gateway.settings["rollout_smoke_max_tokens"]), timeout=360)
        if code != 0:
            return "verify", f"the smoke completion through it to {replica} failed: {answer.get('error', answer)}"
    return None
