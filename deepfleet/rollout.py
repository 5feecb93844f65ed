"""Rolling updates of a serving fleet (`deepfleet rollout`; the runbook is docs/rollout.md).

The replicas with pending changes (a dry run of the site deploy says which) are updated in batches.
Per batch, for each replica (with its Ray workers):
    drain     at every gateway: no new requests; those in flight finish (bounded wait)
    converge  the site deploy on the batch only (pyinfra --limit): the new runtime release
    verify    every gateway sees the replica healthy on its new model release, and a smoke
              completion through each gateway to that replica (still drained) returns tokens
    undrain   at every gateway: it takes traffic again
When a replica fails, its batch goes back to the releases it served before (deploys/rollback.py),
is verified and undrained, and the rollout stops (or goes on while failed batches stay within
`max_failures`). Re-running the same command resumes: replicas already converged have no pending
changes and are skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .deployrun import DeployError, host_log, run_deploy
from .fleet import Fleet, FleetHost
from .paths import ROLLBACK_DEPLOY
from .remote import RemoteError

STEPS = ("drain", "converge", "verify", "undrain")
POLL_S = 1.0


class RolloutRefused(RuntimeError):
    """The rollout cannot start (nothing was changed); the message says why and what to do."""


class StepFailed(Exception):
    def __init__(self, host: str, step: str, reason: str):
        super().__init__(f"{host} failed at {step}: {reason}")
        self.host, self.step, self.reason = host, step, reason


@dataclass
class HostResult:
    name: str
    batch: int = 0
    outcome: str = "not reached"  # updated | unchanged | up to date | failed | rolled back | not reached
    step: str = ""  # the last step it went through (or failed at)
    before: str | None = None  # runtime release ids
    after: str | None = None
    seconds: float = 0.0
    detail: str = ""


@dataclass
class RolloutReport:
    hosts: list[HostResult] = field(default_factory=list)
    failed_batches: int = 0
    halted: bool = False
    seconds: float = 0.0

    @property
    def failure(self) -> HostResult | None:
        return next((h for h in self.hosts if h.outcome == "failed"), None)

    def as_dict(self) -> dict:
        return {"hosts": [h.__dict__ for h in self.hosts], "failed_batches": self.failed_batches,
                "halted": self.halted, "seconds": round(self.seconds, 1)}


def batch_size(spec: str, replicas: int) -> int:
    """`--batch N` or `--batch P%` (of all replicas, rounded up) as a number of replicas, at least 1."""
    text = str(spec).strip()
    try:
        size = math.ceil(replicas * float(text[:-1]) / 100) if text.endswith("%") else int(text)
    except ValueError:
        raise RolloutRefused(f"--batch {spec!r}: write a number of hosts (2) or a share of them (25%)") from None
    if size < 1:
        raise RolloutRefused(f"--batch {spec!r} is less than one host; write 1 or more, or a larger share")
    return size


class Rollout:
    """One rolling update of `fleet`; `log` gets progress lines."""

    def __init__(self, fleet: Fleet, batch: str = "1", max_failures: int = 0, log: Callable[[str], None] = print):
        self.fleet, self.max_failures, self.log = fleet, max_failures, log
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
        self.size = batch_size(batch, len(fleet.replicas))
        if self.size >= len(fleet.replicas):
            raise RolloutRefused(f"a batch of {self.size} would drain all {len(fleet.replicas)} replicas at once; "
                                 "use a smaller --batch")

    def run(self) -> RolloutReport:
        started = time.monotonic()
        report = RolloutReport([HostResult(r.name) for r in self.fleet.replicas])
        results = {h.name: h for h in report.hosts}
        pending = self._pending()
        for replica in self.fleet.replicas:
            if replica.name not in pending:
                results[replica.name].outcome = "up to date"
        batches = [pending[i:i + self.size] for i in range(0, len(pending), self.size)]
        self.log(f"{len(pending)} of {len(self.fleet.replicas)} replicas have changes; {len(batches)} batch(es) "
                 f"of up to {self.size}")
        for number, names in enumerate(batches, 1):
            batch = [self.fleet.hosts[name] for name in names]
            for host in batch:
                results[host.name].batch = number
            if not self._run_batch(number, batch, results):
                report.failed_batches += 1
                if report.failed_batches > self.max_failures:
                    report.halted = True
                    break
        report.seconds = time.monotonic() - started
        return report

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
        except StepFailed as failed:
            self.log(f"batch {number}: {failed}")
            self._roll_back(batch, before, failed, step, results)
            self._finish(batch, results, started)
            return False
        self._undrain(batch, results)
        for host in batch:
            result = results[host.name]
            result.step = "undrain"
            result.after = _release_id(host.release())
            result.outcome = "updated" if result.after != result.before else "unchanged"
        self._finish(batch, results, started)
        return True

    def _pending(self) -> list[str]:
        """Replicas (in inventory order) whose hosts the site deploy would change."""
        members = [m for r in self.fleet.replicas for m in self.fleet.members(r)]
        self.log("planning: which replicas have changes (a dry run of the site deploy)")
        try:
            plan = run_deploy(self.fleet.inventory, dry=True, limit=tuple(members), env=self.fleet.env, echo=False)
        except DeployError as exc:
            raise RolloutRefused(f"the plan failed, nothing was changed: {exc}") from None
        changed = {host for hosts in plan.planned.values() for host in hosts}
        return [r.name for r in self.fleet.replicas if changed & set(self.fleet.members(r))]

    def _check_capacity(self, batch: list[FleetHost]) -> None:
        """Every gateway must keep a healthy replica in service while the batch is drained."""
        leaving = {h.name for h in batch}
        for gateway, (code, status) in zip(self.fleet.gateways, _parallel(lambda g: g.admin("status"),
                                                                          self.fleet.gateways)):
            if code != 0:
                raise StepFailed(gateway.name, "drain", f"its admin socket answered {status}")
            serving = [u["name"] for u in status["upstreams"]
                       if u["healthy"] and not u["draining"] and u["name"] not in leaving]
            if not serving:
                raise StepFailed(batch[0].name, "drain", f"draining {', '.join(sorted(leaving))} would leave gateway "
                                 f"{gateway.name} with no healthy replica in service; fix the unhealthy ones first")

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
        members = [m for h in batch for m in self.fleet.members(h)]
        for host in batch:
            results[host.name].step = "converge"
        self.log(f"converging {', '.join(members)} (site deploy, --limit)")
        try:
            # drained: the driver role may reboot these hosts (roles/driver_reboot.py)
            drained = {**self.fleet.env, "DEEPFLEET_DRAINED": "1"}
            result = run_deploy(self.fleet.inventory, limit=tuple(members), env=drained, echo=False)
            failed, log = result.failed_hosts, result.log
        except DeployError as exc:
            log = exc.log
            failed = [m for m in members if host_log(log, m, errors_only=True)] or members
        for host in batch:
            broken = [m for m in self.fleet.members(host) if m in failed]
            if broken:
                raise StepFailed(host.name, "converge", host_log(log, broken[0]) or "the site deploy failed there")

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

    def _roll_back(self, batch: list[FleetHost], before: dict[str, str | None], failed: StepFailed, step: str,
                   results: dict[str, HostResult]) -> None:
        """Put the batch back on the releases it served before, verify, undrain."""
        failure = results[failed.host]
        failure.outcome, failure.step, failure.detail = "failed", failed.step, failed.reason
        if step == "drain":  # nothing changed on the hosts: just let them serve again
            self._undrain(batch, results)
            return
        back = [h for h in batch if before[h.name]]

        def restore(host: FleetHost) -> str | None:
            try:
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
            if host.name != failed.host:
                result.outcome, result.step = "rolled back", step
            if errors.get(host.name) or not before[host.name]:
                problem = errors.get(host.name) or "it had no earlier release to go back to"
                result.detail = (f"{result.detail}; " if result.detail else "") + \
                    f"rollback failed, left drained: {problem}"
            elif host.name == failed.host:
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
    first exception is raised once every call has finished."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        futures = [pool.submit(function, item) for item in items]
    return [future.result() for future in futures]
