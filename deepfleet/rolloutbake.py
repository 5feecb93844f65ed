"""The bake of a rollout batch (`deepfleet rollout --bake S`): the batch serves real traffic for S
seconds while the gateways count, per replica, the requests it answered, the attempts it failed
(5xx, lost) and the time to its answers; then each replica of the batch is compared with the
replicas not in it (deepfleet/rolloutplan.py: bake_verdict)."""

from __future__ import annotations

import time
from collections.abc import Callable

from .fleet import FleetHost
from .rolloutplan import BakeSample, bake_verdict

POLL_S = 2.0


def counts(gateways: list[FleetHost]) -> dict[str, BakeSample]:
    """Each replica's counters summed over the gateways; healthy where every gateway has it so."""
    samples: dict[str, BakeSample] = {}
    for gateway in gateways:
        code, status = gateway.admin("status")
        for upstream in status.get("upstreams", []) if code == 0 else []:
            sample = samples.setdefault(upstream["name"], BakeSample(0, 0, 0.0))
            sample.served += upstream.get("served", 0)
            sample.failed += upstream.get("failed", 0)
            sample.answer_seconds += upstream.get("answer_seconds", 0.0)
            sample.healthy = sample.healthy and upstream["healthy"] and not upstream["draining"]
    return samples


def bake(gateways: list[FleetHost], batch: list[FleetHost], seconds: float,
         log: Callable[[str], None]) -> tuple[str, str] | None:
    """Bake `batch` for `seconds`: (replica, why it failed), or None when every one passed."""
    names = {h.name for h in batch}
    log(f"baking {', '.join(sorted(names))} for {seconds:g} s")
    first = counts(gateways)
    unhealthy: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        unhealthy |= {name for name, sample in counts(gateways).items() if name in names and not sample.healthy}
    last = counts(gateways)
    delta = {name: BakeSample(last[name].served - first[name].served, last[name].failed - first[name].failed,
                              last[name].answer_seconds - first[name].answer_seconds,
                              last[name].healthy and name not in unhealthy) for name in last if name in first}
    others = [sample for name, sample in delta.items() if name not in names]
    baseline = BakeSample(sum(o.served for o in others), sum(o.failed for o in others),
                          sum(o.answer_seconds for o in others))
    for host in batch:
        sample = delta.get(host.name, BakeSample(0, 0, 0.0, False))
        settings = host.settings
        reason = bake_verdict(sample, baseline, settings["rollout_bake_max_error_percent"],
                              settings["rollout_bake_latency_factor"], settings["rollout_bake_min_requests"])
        if reason:
            return host.name, reason
        log(f"{host.name}: baked: {sample.served} answered, {sample.failed} failed "
            f"(others: {baseline.served} answered, {baseline.failed} failed)")
    return None
