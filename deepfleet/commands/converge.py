"""`deepfleet plan INVENTORY` (what would change, with diffs) and `deepfleet up INVENTORY` (converge;
it locks the hosts against a rollout or rollback meanwhile, deepfleet/hostlock.py).

Exit codes of `plan`: 0 nothing would change, 2 changes are pending, 1 the plan failed.
Both stay thin over pyinfra: `pyinfra INVENTORY deploys/site.py --dry --diff` shows the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import log

EXIT_CONVERGED, EXIT_FAILED, EXIT_CHANGES_PENDING = 0, 1, 2


def register(commands) -> None:
    plan = commands.add_parser("plan", help="show every change a converge would make, with diffs")
    _common(plan)
    plan.set_defaults(func=plan_command)
    up = commands.add_parser("up", help="converge the hosts of INVENTORY to the site deploy")
    _common(up)
    up.set_defaults(func=up_command)


def _common(parser) -> None:
    parser.add_argument("inventory", type=Path, help="a pyinfra inventory file, e.g. inventories/fleet.py")
    parser.add_argument("--limit", action="append", default=[], metavar="HOST_OR_GROUP",
                        help="only these hosts or groups (repeat the flag for several)")


def plan_command(args) -> int:
    from ..deployrun import DeployError, run_deploy
    from ..plan import diff_blocks

    try:
        result = run_deploy(args.inventory.resolve(), dry=True, diff=True, limit=tuple(args.limit), echo=False)
    except DeployError as exc:
        print(f"deepfleet: plan failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not result.planned:
        print("No changes: the hosts are converged.")
        return EXIT_CONVERGED
    print("Operations that would change:")
    for name, hosts in result.planned.items():
        print(f"  {name}  [{', '.join(hosts)}]")
    if result.conditional:
        print("Operations that run only if an earlier change happens (restarts, readiness waits):")
        for name, hosts in result.conditional.items():
            print(f"  {name}  [{', '.join(hosts)}]")
    blocks = diff_blocks(result.log)
    if blocks:
        print("\nDiffs:")
        for block in blocks:
            print(block)
    return EXIT_CHANGES_PENDING


def up_command(args) -> int:
    from .. import hostlock
    from ..deployrun import run_deploy
    from ..fleet import FleetError, describe_fleet

    try:
        hosts = list(describe_fleet(args.inventory.resolve()).hosts.values())
    except FleetError as exc:
        log(f"the hosts are not locked against a rollout or rollback: {exc}")
        hosts = []
    log(f"converging {args.inventory}")
    try:
        with hostlock.locked(hosts, "up", str(args.inventory)):
            result = run_deploy(args.inventory.resolve(), limit=tuple(args.limit))
    except hostlock.HostLocked as exc:
        print(f"deepfleet: up refused, nothing was changed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    hosts = sorted({host for hosts in result.changed_by_operation.values() for host in hosts})
    print(f"{result.changed} change(s) on {len(hosts)} host(s)" + (f": {', '.join(hosts)}" if hosts else ""))
    if result.failed_hosts:
        print(f"failed hosts: {', '.join(result.failed_hosts)}", file=sys.stderr)
        return EXIT_FAILED
    return 0
