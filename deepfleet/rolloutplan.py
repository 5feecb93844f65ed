"""What `deepfleet rollout` decides, apart from acting on hosts (deepfleet/rollout.py acts): the
batch plan of a ramp (`--batch 1,10%,50%`), the failure budget (`--max-failures`,
`--max-fail-percent`), the capacity a plan keeps (`--min-serving`, a gateway left to clients), the
bake gate that compares an updated replica with the ones not yet updated, and how a host lock reads
(owner, age, stale)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


class RolloutRefused(RuntimeError):
    """The rollout cannot start (nothing was changed); the message says why and what to do."""


def batch_steps(spec: str, replicas: int) -> list[int]:
    """`--batch 1,10%,50%`: each step as a number of replicas (`N`, or `P%` of all replicas,
    rounded up), each at least 1 and smaller than the fleet."""
    sizes = []
    for part in str(spec).split(","):
        text = part.strip()
        try:
            size = math.ceil(replicas * float(text[:-1]) / 100) if text.endswith("%") else int(text)
        except ValueError:
            raise RolloutRefused(f"--batch {spec!r}: write a number of hosts (2), a share of them (25%), or a "
                                 "ramp of those (1,10%,50%)") from None
        if size < 1:
            raise RolloutRefused(f"--batch {spec!r}: {text} is less than one host; write 1 or more, or a larger share")
        if size >= replicas:
            raise RolloutRefused(f"--batch {spec!r}: a batch of {size} would drain all {replicas} replicas at once; "
                                 "use smaller steps")
        sizes.append(size)
    return sizes


def plan_batches(spec: str, pending: list[str], replicas: int, first: int = 1) -> list[list[str]]:
    """The batches of `pending` (in order): batch k takes step k of the ramp, the last step repeats
    (Ansible's `serial: [1, 10%, 50%]`). `first`: the number of the first batch (a resumed rollout
    goes on with the step it reached)."""
    steps = batch_steps(spec, replicas)
    batches, start, number = [], 0, first
    while start < len(pending):
        size = steps[min(number, len(steps)) - 1]
        batches.append(pending[start:start + size])
        start, number = start + size, number + 1
    return batches


def budget_exhausted(failed_hosts: int, failed_batches: int, hosts: int, max_failures: int,
                     max_fail_percent: float | None) -> bool:
    """Whether the rollout stops: with `max_fail_percent`, once more than that share of the replicas
    it updates failed; otherwise once more than `max_failures` batches failed."""
    if max_fail_percent is not None:
        return failed_hosts * 100 > max_fail_percent * max(hosts, 1)
    return failed_batches > max_failures


def check_min_serving(batches: list[list[str]], models: dict[str, str], serving: set[str], min_serving: int) -> None:
    """Refuse (RolloutRefused, saying why) a plan that would leave a model with fewer than
    `min_serving` replicas in service while a batch is drained. `models`: replica -> model name;
    `serving`: the replicas healthy and in service at every gateway now."""
    by_model: dict[str, list[str]] = {}
    for name, model in models.items():
        by_model.setdefault(model, []).append(name)
    for number, batch in enumerate(batches, 1):
        for model, names in by_model.items():
            left = [n for n in names if n in serving and n not in batch]
            if len(left) < min_serving:
                down = [n for n in names if n not in serving]
                raise RolloutRefused(f"batch {number} ({', '.join(batch)}) would leave model {model} with "
                                     f"{len(left)} serving replica(s), fewer than --min-serving {min_serving}; "
                                     + (f"{', '.join(down)} is not serving now: bring it back first" if down else
                                        "use smaller batches (--batch 1), add replicas or lower --min-serving"))


def check_gateways_kept(batches: list[list[str]], gateways: list[str]) -> None:
    """Refuse a plan with a batch that holds every gateway: its converge may restart them all at
    once (gateways are rolled with their hosts' batches, one serving while another restarts)."""
    for number, batch in enumerate(batches, 1):
        if len(gateways) > 1 and set(gateways) <= set(batch):
            raise RolloutRefused(f"batch {number} ({', '.join(batch)}) holds every gateway ({', '.join(gateways)}): "
                                 "clients would have none while it converges; use smaller batches (--batch 1)")


def check_lone_gateway(changed_gateways: list[str], gateways: list[str]) -> None:
    """Refuse to roll a gateway-only host with changes when it is the fleet's only gateway: clients
    would have none while it restarts (gateways are rolled one at a time, another one serving)."""
    if changed_gateways and len(gateways) < 2:
        name = changed_gateways[0]
        raise RolloutRefused(f"gateway {name} has changes and is the fleet's only gateway: clients would have none "
                             f"while it restarts; add a second gateway to the inventory's `gateways` group (clients "
                             f"that know both are served throughout), or update it at a quiet time with "
                             f"`deepfleet up INVENTORY --limit {name}`")


@dataclass
class BakeSample:
    """What the gateways counted for replicas during a bake (summed over gateways): answered
    requests, failed ones (5xx, connection lost), seconds to the answers' first byte, health."""

    served: int
    failed: int
    answer_seconds: float
    healthy: bool = True


def bake_verdict(updated: BakeSample, others: BakeSample, max_error_percent: float = 1.0,
                 latency_factor: float = 3.0, min_requests: int = 5) -> str | None:
    """Why the updated replica fails its bake, or None when it passes: it went unhealthy; it failed
    more than `max_error_percent` of its requests and more than the others did; or its answers took
    more than `latency_factor` times as long as theirs. Fewer than `min_requests` prove nothing
    about its answers. Failed requests are named first: they say most about what went wrong."""
    asked = updated.served + updated.failed
    rate = 100 * updated.failed / asked if asked else 0.0
    other_asked = others.served + others.failed
    other_rate = 100 * others.failed / other_asked if other_asked else 0.0
    if asked >= min_requests and rate > max_error_percent and rate > other_rate:
        return (f"{updated.failed} of {asked} requests failed ({rate:.0f}%) during the bake; "
                f"others: {others.failed} of {other_asked} ({other_rate:.0f}%)")
    if not updated.healthy:
        return "it went unhealthy at a gateway during the bake"
    if asked < min_requests:
        return None
    if updated.served and others.served:
        mine, theirs = updated.answer_seconds / updated.served, others.answer_seconds / others.served
        if mine > latency_factor * theirs:
            return (f"its answers took {mine:.2f} s per answer during the bake, others {theirs:.2f} s "
                    f"(more than {latency_factor:g} times as long)")
    return None


def lock_description(lock: dict, now: float, machine: str, pid_alive: Callable[[int], bool]) -> tuple[str, bool]:
    """How a host lock reads ("rollout ID by OWNER (pid P on M), taken 3 min ago") and whether it is
    stale: its process ran on this machine and is gone. Locks are never broken automatically."""
    age = max(0.0, now - float(lock.get("since", now)))
    text = (f"{lock.get('operation', '?')} {lock.get('id', '?')} by {lock.get('owner', '?')} "
            f"(pid {lock.get('pid', '?')} on {lock.get('machine', '?')}), taken {_age(age)} ago")
    stale = lock.get("machine") == machine and isinstance(lock.get("pid"), int) and not pid_alive(lock["pid"])
    return text, stale


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
