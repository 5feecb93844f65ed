"""`deepfleet rollout INVENTORY [--batch 1,10%,50%] [--max-failures N | --max-fail-percent P]
[--min-serving N] [--bake S] [--pause-after N] [--resume]`: a rolling update of the fleet's replicas,
drained at every gateway, verified, baked, rolled back on failure (deepfleet/rollout.py, runbook:
docs/rollout.md). Every host of the fleet is locked for its duration (deepfleet/hostlock.py).

Exit codes: 0 every replica with changes was updated (or none had any), or the rollout paused as
asked; 1 a replica failed: its batch was put back on its previous releases (the summary says which
host, at which step, why); 2 refused before anything changed (bad --batch, too few replicas, a
capacity it cannot keep, a host locked by another operation, plan failed); 130 interrupted: the batch
in progress was put back in service and the record says where it stopped (`--resume` goes on).
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import log

EXIT_DONE, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130


def register(commands) -> None:
    parser = commands.add_parser("rollout", help="update the replicas batch by batch: drain, converge, verify, undrain")
    parser.add_argument("inventory", type=Path, help="a pyinfra inventory with gateways and gpu_nodes groups")
    parser.add_argument("--batch", default="1", metavar="N|P%[,...]", help="replicas updated at once (default 1), a "
                        "share of them (25%%), or a ramp whose last step repeats (1,10%%,50%%)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-failures", type=int, default=0, metavar="N",
                        help="failed batches tolerated before the rollout stops (default 0: stop at the first)")
    budget.add_argument("--max-fail-percent", type=float, metavar="P",
                        help="stop once more than P%% of the replicas to update failed")
    parser.add_argument("--min-serving", type=int, default=1, metavar="N",
                        help="replicas of each model kept healthy and in service (default 1); refused before any "
                             "change when a batch would go below")
    parser.add_argument("--bake", type=float, default=0, metavar="S", help="seconds each batch serves before the "
                        "next one, its failed requests and answer times compared with the others' (default 0)")
    parser.add_argument("--pause-after", type=int, metavar="N", help="stop after batch N; --resume goes on")
    parser.add_argument("--resume", action="store_true", help="go on with the last rollout of this inventory "
                        "(paused, interrupted or stopped), with its options")
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import hostlock, rolloutrecord
    from ..fleet import FleetError, describe_fleet
    from ..rollout import Rollout, RolloutOptions, RolloutRefused, interrupts

    inventory = args.inventory.resolve()
    resumed = None
    if args.resume:
        try:
            resumed = rolloutrecord.load(inventory)
        except ValueError as exc:
            print(f"deepfleet: nothing to resume: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if resumed.kind != "rollout" or resumed.status == "done":
            print(f"deepfleet: nothing to resume: the last {resumed.kind} {resumed.id} is {resumed.status}; "
                  "start a new rollout", file=sys.stderr)
            return EXIT_REFUSED
        options = resumed.options
        options.pause_after = args.pause_after
        log(f"resuming rollout {resumed.id} ({resumed.status} after batch {resumed.last_batch})")
    else:
        options = RolloutOptions(args.batch, args.max_failures, args.max_fail_percent, args.min_serving, args.bake,
                                 args.pause_after)
    lock = hostlock.new_lock("rollout", resumed.id if resumed else None)
    log(f"describing the fleet of {args.inventory}")
    with interrupts(log):
        try:
            fleet = describe_fleet(inventory)
            rollout = Rollout(fleet, options, log=log, rollout_id=lock["id"], resumed=resumed,
                              progress=lambda report: rolloutrecord.save(report, inventory))
            hosts = list(fleet.hosts.values())
            hostlock.take(hosts, lock, str(args.inventory))
        except (FleetError, RolloutRefused, hostlock.HostLocked) as exc:
            print(f"deepfleet: rollout refused, nothing was changed: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except KeyboardInterrupt:
            print("deepfleet: interrupted before the rollout began; nothing was changed", file=sys.stderr)
            return EXIT_INTERRUPTED
        log(f"rollout {lock['id']}: the fleet's {len(hosts)} hosts are locked")
        try:
            report = rollout.run()
        except RolloutRefused as exc:
            print(f"deepfleet: rollout refused, nothing was changed: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except KeyboardInterrupt:
            print("deepfleet: interrupted before the first batch; nothing was changed", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            hostlock.give_back(hosts, lock)
    record = rolloutrecord.save(report, inventory)
    return report_outcome(report, record, args.inventory)


def report_outcome(report, record: Path, inventory: Path) -> int:
    """The summary table and the last line for `report`; the exit status."""
    print_summary(report)
    what = "rollback of rollout " + report.of if report.kind == "rollback" else "rollout"
    if report.status == "interrupted":
        again = f"deepfleet rollback {inventory} --rollout {report.of}" if report.kind == "rollback" else \
            f"deepfleet rollout {inventory} --resume"
        print(f"{what} {report.id} interrupted: the batch in progress is back in service (report: {record}); "
              f"`{again}` goes on")
        return EXIT_INTERRUPTED
    failure = report.failure
    if failure is None:
        if report.status == "paused":
            print(f"{what} {report.id} paused after batch {report.last_batch} (report: {record}); "
                  f"`deepfleet rollout {inventory} --resume` goes on")
        else:
            print(f"{what} {report.id} done in {report.seconds:.0f} s (report: {record})")
        return EXIT_DONE
    print(f"{what} {report.id} {'stopped' if report.halted else 'finished with failures'}: {failure.name} failed "
          f"at {failure.step}: {failure.detail}")
    print(f"fix the cause, then `deepfleet rollout {inventory} --resume` (replicas already updated are skipped), "
          f"or undo it: `deepfleet rollback {inventory} --rollout {report.id}` (report: {record})")
    return EXIT_FAILED


def print_summary(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"deepfleet {report.kind} {report.id}")
    for column in ("host", "batch", "result", "step", "release before -> after", "seconds", "detail"):
        table.add_column(column, overflow="fold")
    styles = {"updated": "green", "failed": "bold red", "rolled back": "yellow", "not reached": "dim"}
    for host in report.hosts:
        release = f"{host.before or '-'} -> {host.after or '-'}" if host.batch else (host.before or "")
        table.add_row(host.name, str(host.batch or "-"), f"[{styles.get(host.outcome, '')}]{host.outcome}",
                      host.step or "-", release, f"{host.seconds:.0f}" if host.batch else "-", host.detail)
    Console(width=160).print(table)
