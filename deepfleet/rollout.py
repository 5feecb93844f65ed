"""Rolling updates of a serving fleet (`deepfleet rollout`, and `deepfleet rollback --rollout ID`;
the runbook is docs/rollout.md). The decisions (batch plans, budgets, capacity, the bake gate) are
deepfleet/rolloutplan.py; this module acts on hosts.

The replicas with pending changes (a dry run of the site deploy says which) are updated in batches
(a ramp: `--batch 1,10%,50%`). Per batch, for each replica (with its Ray workers):
    drain     at every gateway: no new requests; those in flight finish (bounded wait)
    converge  the site deploy on the batch only (pyinfra --limit): the new runtime release
              (for a rollback of a rollout: deploys/rollback.py to the release it served before)
    verify    every gateway sees the replica healthy on its new model release, and a smoke
              completion through each gateway to that replica (still drained) returns tokens
    undrain   at every gateway: it takes traffic again
    bake      (with --bake S) S seconds of real traffic; the gateways' counts of its failed
              requests and answer times are compared with those of the replicas not in the batch
When a replica fails, its batch goes back to the releases it served before (deploys/rollback.py),
is verified and undrained, and the rollout stops once the failure budget is spent. Gateway-only
hosts with changes follow, each a batch of its own (deepfleet/rolloutgateways.py). An interrupt
(Ctrl-C, SIGTERM, SIGHUP of a lost terminal) in the middle of a batch puts that batch back the same
way before the rollout ends; the report says `interrupted`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .deployrun import DeployError, host_log, run_deploy
from .fleet import Fleet, FleetHost
from .interrupts import interrupts, shield
from .paths import ROLLBACK_DEPLOY
from .remote import RemoteError
from .rolloutrecord import HostResult, RolloutOptions, RolloutReport
from .rolloutbake import bake
from .rolloutgateways import gateway_only, roll_gateway
from .rolloutplan import (RolloutRefused, batch_steps, budget_exhausted, check_gateways_kept, check_lone_gateway,
                          check_min_serving, plan_batches)

__all__ = ["Rollout", "RolloutOptions", "RolloutRefused", "RolloutReport", "HostResult", "interrupts"]

POLL_S = 1.0


class StepFailed(Exception):
    def __init__(self, host: str, step: str, reason: str):
        super().__init__(f"{host} failed at {step}: {reason}")
        self.host, self.step, self.reason = host, step, reason


class Rollout:
    """One rolling update of `fleet`; `log` gets progress lines, `progress(report)` is called after
    each batch (to keep the record on disk). `resumed`: the record of the rollout this one goes on
    with. `targets`: {replica: release id} for a rollback of a rollout (in its batches `groups`)."""

    def __init__(self, fleet: Fleet, options: RolloutOptions, log: Callable[[str], None] = print,
                 rollout_id: str = "", resumed: RolloutReport | None = None,
                 targets: dict[str, str] | None = None, groups: list[list[str]] | None = None,
                 of: str | None = None, progress: Callable[[RolloutReport], None] = lambda report: None):
        self.fleet, self.options, self.log, self.progress, self.of = fleet, options, log, progress, of
        self.id, self.resumed, self.targets, self.groups = rollout_id, resumed, targets, groups
        if not fleet.grouped:
            raise RolloutRefused("the inventory has no `gateways` and `gpu_nodes` groups, so each host serves alone "
                                 "and none can take another's traffic while it updates; name the groups "
                                 "(docs/rollout.md), or use `deepfleet up`")
        if not fleet.gateways:
            raise RolloutRefused("the inventory has no gateway to drain replicas at; put hosts in its `gateways` "
                                 "group (or use `deepfleet up` for a fleet without gateways)")
        if len(fleet.replicas) < 2:
            raise RolloutRefused("a rolling update needs two replicas or more (one serves while the other is "
                                 "updated); with one, use `deepfleet up` (clients wait or retry while it restarts)")
        batch_steps(options.batch, len(fleet.replicas))  # refuses a bad --batch before anything else
        if options.min_serving < 1:
            raise RolloutRefused("--min-serving must be 1 or more: a model with no replica in service fails clients")

    def run(self) -> RolloutReport:
        started = time.monotonic()
        report = self._new_report()
        results = {h.name: h for h in report.hosts}
        pending, gateways = (list(self.targets), []) if self.targets is not None else self._pending()
        for host in self._rolled_hosts():
            if host.name not in pending + gateways and results[host.name].outcome != "updated":
                results[host.name].outcome = "up to date"
        if self.groups is not None:
            batches = [[n for n in group if n in pending] for group in self.groups]
            batches = [b for b in batches if b]
        else:
            batches = plan_batches(self.options.batch, pending, len(self.fleet.replicas), report.last_batch + 1)
        check_gateways_kept(batches, [g.name for g in self.fleet.gateways])
        check_min_serving(batches, {r.name: r.settings["model_name"] for r in self.fleet.replicas},
                          self._serving_now(), self.options.min_serving)
        check_lone_gateway(gateways, [g.name for g in self.fleet.gateways])
        self.log(f"{len(pending)} of {len(self.fleet.replicas)} replicas to move; {len(batches)} batch(es) of "
                 f"{', '.join(str(len(b)) for b in batches) or '-'}"
                 + (f"; then the gateway(s) {', '.join(gateways)}, one at a time" if gateways else ""))
        batches += [[name] for name in gateways]
        report.status = "done"
        try:
            for index, names in enumerate(batches):
                number = report.last_batch + 1
                batch = [self.fleet.hosts[name] for name in names]
                for host in batch:
                    results[host.name] = HostResult(host.name, number)
                report.hosts = [results[h.name] for h in report.hosts]
                report.last_batch = number
                ok = self._run_gateway_batch(number, batch[0], results) if names[0] in gateways else \
                    self._run_batch(number, batch, results)
                if not ok:
                    report.failed_batches += 1
                    failed_hosts = sum(1 for h in report.hosts if h.outcome == "failed")
                    if budget_exhausted(failed_hosts, report.failed_batches, len(pending) + len(gateways),
                                        self.options.max_failures, self.options.max_fail_percent):
                        report.status = "halted"
                        break
                    report.status = "finished with failures"
                self.progress(report)
                if self.options.pause_after and number >= self.options.pause_after and index + 1 < len(batches):
                    report.status = "paused"
                    self.log(f"paused after batch {number}, as --pause-after asked")
                    break
        except KeyboardInterrupt as interrupt:
            report.status = "interrupted"
            self.log(f"interrupted ({interrupt or 'Ctrl-C'}); the batch was put back in service")
        report.seconds = time.monotonic() - started + (self.resumed.seconds if self.resumed else 0)
        return report

    def _new_report(self) -> RolloutReport:
        if self.resumed:
            report = RolloutReport.from_dict(self.resumed.as_dict())
            known = {h.name: h for h in report.hosts}
            report.hosts = [known.get(h.name) or HostResult(h.name) for h in self._rolled_hosts()]
            report.failed_batches = 0
            return report
        return RolloutReport(self.id, "rollout" if self.targets is None else "rollback", self.of, self.options,
                             [HostResult(h.name) for h in self._rolled_hosts()])

    def _rolled_hosts(self) -> list[FleetHost]:
        """The hosts this rollout may move: the replicas, then (not in a rollback of a rollout: a
        gateway has no release to go back to) the gateway-only hosts."""
        return self.fleet.replicas + (gateway_only(self.fleet) if self.targets is None else [])

    # --- one batch -------------------------------------------------------------------------------

    def _run_batch(self, number: int, batch: list[FleetHost], results: dict[str, HostResult]) -> bool:
        names = ", ".join(h.name for h in batch)
        self.log(f"batch {number}: {names}")
        started = time.monotonic()
        before = dict(zip((h.name for h in batch), _parallel(lambda h: _release_id(_safe_release(h)), batch)))
        for host in batch:
            results[host.name].before = before[host.name]
        step = "drain"
        try:
            self._check_capacity(batch)
            self._drain(batch, results)
            step = "converge"
            self._converge(batch, results)
            step = "verify"
            self._verify(batch, results)
            step = "undrain"
            self._undrain(batch, results)
            if self.options.bake_s:
                step = "bake"
                self._bake(batch, results)
        except StepFailed as failed:
            self.log(f"batch {number}: {failed}")
            if step == "bake":
                self._drain(batch, results)
            self._roll_back(batch, before, step, results, failed)
            self._finish(batch, results, started)
            return False
        except KeyboardInterrupt:
            self.log(f"batch {number}: interrupted at {step}; putting {names} back in service")
            if step == "undrain":  # updated and verified: only the undrain is left to finish
                self._undrain(batch, results)
                self._updated(batch, results, started)
                raise
            for host in batch:
                results[host.name].detail = f"interrupted at {step}"
            if step == "bake":  # not gated: back to what it served, drained first as after a failure
                self._drain(batch, results)
            self._roll_back(batch, before, step, results)
            self._finish(batch, results, started)
            raise
        self._updated(batch, results, started)
        return True

    def _updated(self, batch: list[FleetHost], results: dict[str, HostResult], started: float) -> None:
        for host in batch:
            result = results[host.name]
            result.step = "bake" if self.options.bake_s else "undrain"
            result.after = _release_id(_safe_release(host))
            result.outcome = "updated" if result.after != result.before else "unchanged"
        self._finish(batch, results, started)

    def _serving_now(self) -> set[str]:
        """The replicas healthy and in service at every gateway."""
        serving = {r.name for r in self.fleet.replicas}
        for gateway, (code, status) in zip(self.fleet.gateways, _parallel(lambda g: g.admin("status"),
                                                                          self.fleet.gateways)):
            if code != 0:
                raise RolloutRefused(f"gateway {gateway.name}'s admin socket answered {status}; fix the gateway first")
            serving &= {u["name"] for u in status["upstreams"] if u["healthy"] and not u["draining"]}
        return serving

    def _pending(self) -> tuple[list[str], list[str]]:
        """Replicas (in inventory order) whose hosts the site deploy would change; gateway-only hosts it
        would change."""
        members = [m for r in self.fleet.replicas for m in self.fleet.members(r)]
        gateways = [g.name for g in gateway_only(self.fleet)]
        self.log("planning: which replicas and gateways have changes (a dry run of the site deploy)")
        try:
            plan = run_deploy(self.fleet.inventory, dry=True, limit=tuple(members + gateways), env=self.fleet.env,
                              echo=False)
        except DeployError as exc:
            raise RolloutRefused(f"the plan failed, nothing was changed: {exc}") from None
        changed = {host for hosts in plan.planned.values() for host in hosts}
        return ([r.name for r in self.fleet.replicas if changed & set(self.fleet.members(r))],
                [name for name in gateways if name in changed])

    def _check_capacity(self, batch: list[FleetHost]) -> None:
        """Every gateway must keep --min-serving healthy replicas of each model in service while the
        batch is drained."""
        leaving = {h.name for h in batch}
        models = {r.name: r.settings["model_name"] for r in self.fleet.replicas}
        for gateway, (code, status) in zip(self.fleet.gateways, _parallel(lambda g: g.admin("status"),
                                                                          self.fleet.gateways)):
            if code != 0:
                raise StepFailed(gateway.name, "drain", f"its admin socket answered {status}")
            serving = [u["name"] for u in status["upstreams"]
                       if u["healthy"] and not u["draining"] and u["name"] not in leaving]
            for model in sorted({models[name] for name in leaving}):
                left = [name for name in serving if models.get(name) == model]
                if len(left) < self.options.min_serving:
                    raise StepFailed(batch[0].name, "drain", f"draining {', '.join(sorted(leaving))} would leave "
                                     f"gateway {gateway.name} with {len(left)} healthy replica(s) of {model} in "
                                     f"service (--min-serving {self.options.min_serving}); fix the unhealthy ones "
                                     "first")

    def _drain(self, batch: list[FleetHost], results: dict[str, HostResult]) -> None:
        wait = max(h.settings["rollout_drain_timeout_s"] for h in batch)
        for host in batch:
            results[host.name].step = "drain"
        answers = _parallel(lambda pair: pair[0].admin("drain", pair[1].name, "--wait", str(wait), timeout=wait + 60),
                            [(g, h) for g in self.fleet.gateways for h in batch])
        for (gateway, host), (code, state) in zip([(g, h) for g in self.fleet.gateways for h in batch], answers):
            if code == 2:
                raise StepFailed(host.name, "drain", f"gateway {gateway.name}: {state.get('error', state)}")
            if code == 1:
                note = f"{state['outstanding']} request(s) still in flight at {gateway.name} after {wait} s"
                self.log(f"{host.name}: {note}; going on")
                results[host.name].detail = note
        self.log(f"drained {', '.join(h.name for h in batch)} at {', '.join(g.name for g in self.fleet.gateways)}")

    def _converge(self, batch: list[FleetHost], results: dict[str, HostResult]) -> None:
        for host in batch:
            results[host.name].step = "converge"
        if self.targets is not None:
            return self._switch_back(batch)
        problems = self._site_deploy([m for h in batch for m in self.fleet.members(h)])
        for host in batch:
            broken = [problems[m] for m in self.fleet.members(host) if m in problems]
            if broken:
                raise StepFailed(host.name, "converge", broken[0])

    def _site_deploy(self, members: list[str]) -> dict[str, str]:
        """The site deploy on `members` only (drained: their traffic is served elsewhere); {host: why}
        for each that failed."""
        self.log(f"converging {', '.join(members)} (site deploy, --limit)")
        try:
            # drained: the driver role may reboot these hosts (roles/driver_reboot.py)
            drained = {**self.fleet.env, "DEEPFLEET_DRAINED": "1"}
            with shield():  # an interrupt lets the deploy finish: nothing half-applied to roll back from
                result = run_deploy(self.fleet.inventory, limit=tuple(members), env=drained, echo=False)
            failed, log = result.failed_hosts, result.log
        except DeployError as exc:
            log = exc.log
            failed = [m for m in members if host_log(log, m, errors_only=True)] or members
        return {m: host_log(log, m) or "the site deploy failed there" for m in members if m in failed}

    def _run_gateway_batch(self, number: int, gateway: FleetHost, results: dict[str, HostResult]) -> bool:
        """A gateway-only host, alone, while the other gateways serve (deepfleet/rolloutgateways.py)."""
        self.log(f"batch {number}: gateway {gateway.name}")
        return roll_gateway(self.fleet, gateway, results[gateway.name], self.options.min_serving,
                            lambda: self._site_deploy([gateway.name]).get(gateway.name), self.log)

    def _switch_back(self, batch: list[FleetHost]) -> None:
        """A rollback of a rollout: each replica to the release it served before that rollout."""
        self.log(f"switching {', '.join(h.name for h in batch)} back (deploys/rollback.py)")

        def switch(host: FleetHost) -> str | None:
            try:
                if _release_id(_safe_release(host)) != self.targets[host.name]:
                    run_deploy(self.fleet.inventory, ROLLBACK_DEPLOY, limit=(host.name,), echo=False,
                               env={**self.fleet.env, "DEEPFLEET_ROLLBACK_TO": self.targets[host.name]})
            except DeployError as exc:
                return host_log(exc.log, host.name) or str(exc)
            return None

        with shield():
            errors = _parallel(switch, batch)
        for host, error in zip(batch, errors):
            if error:
                raise StepFailed(host.name, "converge", error)

    def _verify(self, batch: list[FleetHost], results: dict[str, HostResult]) -> None:
        for host in batch:
            results[host.name].step = "verify"
        _parallel(self._verify_one, batch)

    def _verify_one(self, host: FleetHost, model_release: str | None = None) -> None:
        """`host` is healthy on its current model release at every gateway, and answers a smoke
        completion through each of them."""
        try:
            release = host.release()
        except RemoteError as exc:
            raise StepFailed(host.name, "verify", str(exc)) from None
        if release is None:
            raise StepFailed(host.name, "verify", "it has no runtime release")
        expected = model_release or release["model"]["release"]
        deadline = time.monotonic() + host.settings["rollout_healthy_timeout_s"]
        waiting = list(self.fleet.gateways)
        last = {}
        while waiting:
            for gateway in list(waiting):
                code, state = gateway.admin("status")
                upstream = next((u for u in state.get("upstreams", []) if u["name"] == host.name), None)
                last[gateway.name] = upstream
                if upstream and upstream["healthy"] and upstream["release"] == expected:
                    waiting.remove(gateway)
            if waiting and time.monotonic() > deadline:
                gateway = waiting[0]
                seen = last.get(gateway.name) or {}
                raise StepFailed(host.name, "verify", f"gateway {gateway.name} does not see it healthy on model release "
                                 f"{expected} after {host.settings['rollout_healthy_timeout_s']} s (healthy: "
                                 f"{seen.get('healthy')}, release: {seen.get('release') or '-'}, last error: "
                                 f"{seen.get('last_error') or '-'})")
            if waiting:
                time.sleep(POLL_S)
        for gateway in self.fleet.gateways:
            code, answer = gateway.admin("probe", host.name, "--model", host.settings["model_name"], "--prompt",
                                         host.settings["rollout_smoke_prompt"], "--max-tokens",
                                         str(host.settings["rollout_smoke_max_tokens"]), timeout=360)
            if code != 0:
                raise StepFailed(host.name, "verify", f"the smoke completion through gateway {gateway.name} failed: "
                                 f"{answer.get('error', answer)}")
        self.log(f"{host.name}: healthy on {expected} at every gateway; smoke completion answered")

    def _undrain(self, batch: list[FleetHost], results: dict[str, HostResult]) -> None:
        pairs = [(g, h) for g in self.fleet.gateways for h in batch]
        for (gateway, host), (code, state) in zip(pairs, _parallel(lambda p: p[0].admin("undrain", p[1].name), pairs)):
            if code != 0:
                results[host.name].detail = f"undrain at {gateway.name} failed: {state}; undrain it by hand"
        self.log(f"undrained {', '.join(h.name for h in batch)}")

    def _bake(self, batch: list[FleetHost], results: dict[str, HostResult]) -> None:
        """--bake S: the gateways' counts for each replica of the batch against the others (rolloutbake)."""
        for host in batch:
            results[host.name].step = "bake"
        failure = bake(self.fleet.gateways, batch, self.options.bake_s, self.log)
        if failure:
            raise StepFailed(failure[0], "bake", failure[1])

    def _roll_back(self, batch: list[FleetHost], before: dict[str, str | None], step: str,
                   results: dict[str, HostResult], failed: StepFailed | None = None) -> None:
        """Put the batch back on the releases it served before, verify, undrain (after a failure, or
        an interrupt: `failed` None). A replica still on its release is only verified."""
        if failed:
            failure = results[failed.host]
            failure.outcome, failure.step, failure.detail = "failed", failed.step, failed.reason
        if step == "drain":  # nothing changed on the hosts: just let them serve again
            self._undrain(batch, results)
            for host in batch:
                results[host.name].after = before[host.name]
            return
        back = [h for h in batch if before[h.name]]

        def restore(host: FleetHost) -> str | None:
            try:
                if _release_id(_safe_release(host)) != before[host.name]:
                    run_deploy(self.fleet.inventory, ROLLBACK_DEPLOY, limit=(host.name,), echo=False,
                               env={**self.fleet.env, "DEEPFLEET_ROLLBACK_TO": before[host.name]})
                self._verify_one(host)
            except (DeployError, StepFailed, RemoteError) as exc:
                return str(exc) if not isinstance(exc, DeployError) else host_log(exc.log, host.name) or str(exc)
            return None

        self.log(f"rolling back {', '.join(h.name for h in back)} to the releases they served before")
        errors = dict(zip((h.name for h in back), _parallel(restore, back)))
        restored = [h for h in back if errors[h.name] is None]
        self._undrain(restored, results)
        for host in batch:
            result = results[host.name]
            result.after = _release_id(_safe_release(host))
            if failed is None or host.name != failed.host:
                result.outcome, result.step = "rolled back", step
            if errors.get(host.name) or not before[host.name]:
                problem = errors.get(host.name) or "it had no earlier release to go back to"
                result.detail = (f"{result.detail}; " if result.detail else "") + \
                    f"rollback failed, left drained: {problem}"
            elif failed and host.name == failed.host:
                result.detail += f" (rolled back to {before[host.name]}, serving again)"

    def _finish(self, batch: list[FleetHost], results: dict[str, HostResult], started: float) -> None:
        for host in batch:
            results[host.name].seconds = round(time.monotonic() - started, 1)


def _release_id(record: dict | None) -> str | None:
    return record["id"] if record else None


def _safe_release(host: FleetHost) -> dict | None:
    try:
        return host.release()
    except RemoteError:
        return None


def _parallel(function, items: list) -> list:
    """function(item) for every item, in threads (hosts are independent); results in order. The
    first exception is raised once every call has finished, an interrupt too (so that nothing sent
    to a host lands after the rollout put the batch back)."""
    if not items:
        return []
    pool = ThreadPoolExecutor(max_workers=min(16, len(items)))
    try:
        futures = [pool.submit(function, item) for item in items]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True)
