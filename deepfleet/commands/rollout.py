"""`deepfleet rollout INVENTORY [--batch N | --batch 25%] [--max-failures 0]`: a rolling update of the
fleet's replicas, drained at every gateway, verified, rolled back on failure (deepfleet/rollout.py,
runbook: docs/rollout.md).

Exit codes: 0 every replica with changes was updated (or none had any); 1 a replica failed: its
batch was put back on its previous releases (the summary says which host, at which step, why);
2 the rollout was refused before anything changed (bad --batch, too few replicas, plan failed).
Re-running the same command resumes: converged replicas are skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import log

EXIT_DONE, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def register(commands) -> None:
    parser = commands.add_parser("rollout", help="update the replicas batch by batch: drain, converge, verify, undrain")
    parser.add_argument("inventory", type=Path, help="a pyinfra inventory with gateways and gpu_nodes groups")
    parser.add_argument("--batch", default="1", metavar="N|P%", help="replicas updated at once (default 1), or a "
                        "share of them, e.g. 25%%")
    parser.add_argument("--max-failures", type=int, default=0, metavar="N",
                        help="failed batches tolerated before the rollout stops (default 0: stop at the first)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..atomicfile import write_atomic
    from ..fleet import FleetError, describe_fleet
    from ..paths import state_dir
    from ..rollout import Rollout, RolloutRefused

    log(f"describing the fleet of {args.inventory}")
    try:
        fleet = describe_fleet(args.inventory.resolve())
        report = Rollout(fleet, args.batch, args.max_failures, log=log).run()
    except (FleetError, RolloutRefused) as exc:
        print(f"deepfleet: rollout refused, nothing was changed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print_summary(report)
    record = state_dir() / "rollouts" / f"{args.inventory.stem}.json"
    write_atomic(record, json.dumps(report.as_dict(), indent=1) + "\n")
    failure = report.failure
    if failure is None:
        print(f"rollout done in {report.seconds:.0f} s (report: {record})")
        return EXIT_DONE
    print(f"rollout {'stopped' if report.halted else 'finished with failures'}: {failure.name} failed at "
          f"{failure.step}: {failure.detail}")
    print(f"fix the cause, then run the same command again: replicas already updated are skipped (report: {record})")
    return EXIT_FAILED


def print_summary(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="deepfleet rollout")
    for column in ("host", "batch", "result", "step", "release before -> after", "seconds", "detail"):
        table.add_column(column, overflow="fold")
    styles = {"updated": "green", "failed": "bold red", "rolled back": "yellow", "not reached": "dim"}
    for host in report.hosts:
        release = f"{host.before or '-'} -> {host.after or '-'}" if host.batch else (host.before or "")
        table.add_row(host.name, str(host.batch or "-"), f"[{styles.get(host.outcome, '')}]{host.outcome}",
                      host.step or "-", release, f"{host.seconds:.0f}" if host.batch else "-", host.detail)
    Console(width=160).print(table)
