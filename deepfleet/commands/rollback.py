"""`deepfleet rollback INVENTORY [--to RELEASE] [--limit H]`: switch hosts back to an earlier runtime
release (the model release, runtime version and config they served), verified first
(deploys/rollback.py). `deepfleet rollback INVENTORY --rollout ID`: exactly the replicas rollout ID
moved, each to the release it served before, drained and verified one batch at a time like the
rollout itself (deepfleet/rollout.py). Both lock the fleet's hosts (deepfleet/hostlock.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import log


def register(commands) -> None:
    parser = commands.add_parser("rollback", help="switch hosts back to their previous release (model + runtime + config)")
    parser.add_argument("inventory", type=Path, help="the pyinfra inventory, e.g. inventories/mine.py")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--to", metavar="RELEASE", help="a runtime release id kept on the hosts, or a model release "
                     "id (default: the previous release)")
    how.add_argument("--rollout", metavar="ID", help="undo rollout ID: only the replicas it moved, drained batch by "
                     "batch (ids: .deepfleet/rollouts/<inventory>/)")
    parser.add_argument("--limit", action="append", default=[], help="only hosts matching this pattern (repeatable)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import hostlock
    from ..deployrun import run_deploy
    from ..fleet import FleetError, describe_fleet
    from ..paths import ROLLBACK_DEPLOY

    if args.rollout:
        if args.limit:
            print("deepfleet: --rollout undoes what that rollout moved; it takes no --limit", file=sys.stderr)
            return 2
        return _undo_rollout(args)
    try:
        hosts = list(describe_fleet(args.inventory.resolve()).hosts.values())
    except FleetError as exc:
        log(f"the hosts are not locked: {exc}")
        hosts = []
    log(f"rolling back {args.inventory} to {args.to or 'the previous release'}")
    try:
        with hostlock.locked(hosts, "rollback", str(args.inventory)):
            result = run_deploy(args.inventory, ROLLBACK_DEPLOY, limit=tuple(args.limit),
                                env={"DEEPFLEET_ROLLBACK_TO": args.to or ""})
    except hostlock.HostLocked as exc:
        print(f"deepfleet: rollback refused, nothing was changed: {exc}", file=sys.stderr)
        return 2
    if result.failed_hosts:
        print(f"rollback failed on {', '.join(result.failed_hosts)}; the hosts keep serving their current "
              "release (see the log above)")
        return 1
    print("rolled back; the next site deploy switches back to the inventory's model_source unless you change it")
    return 0


def _undo_rollout(args) -> int:
    from .. import hostlock, rolloutrecord
    from ..fleet import FleetError, describe_fleet
    from ..rollout import Rollout, RolloutOptions, RolloutRefused, interrupts
    from .rollout import EXIT_INTERRUPTED, EXIT_REFUSED, report_outcome

    inventory = args.inventory.resolve()
    try:
        record = rolloutrecord.load(inventory, args.rollout)
    except ValueError as exc:
        print(f"deepfleet: rollback refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    moved = sorted((h for h in record.hosts if h.outcome == "updated" and h.before), key=lambda h: h.batch)
    if not moved:
        print(f"rollout {record.id} moved no replica: nothing to roll back")
        return 0
    groups: dict[int, list[str]] = {}
    for host in moved:
        groups.setdefault(host.batch, []).append(host.name)
    lock = hostlock.new_lock("rollback")
    log(f"rolling back what rollout {record.id} moved: " + "; ".join(
        f"batch {n}: {', '.join(names)}" for n, names in groups.items()))
    with interrupts(log):
        try:
            fleet = describe_fleet(inventory)
            rollout = Rollout(fleet, RolloutOptions(min_serving=record.options.min_serving), log=log,
                              rollout_id=lock["id"], targets={h.name: h.before for h in moved if h.name in fleet.hosts},
                              groups=list(groups.values()), of=record.id,
                              progress=lambda report: rolloutrecord.save(report, inventory))
            hosts = list(fleet.hosts.values())
            hostlock.take(hosts, lock, str(args.inventory))
        except (FleetError, RolloutRefused, hostlock.HostLocked) as exc:
            print(f"deepfleet: rollback refused, nothing was changed: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        try:
            report = rollout.run()
        except RolloutRefused as exc:
            print(f"deepfleet: rollback refused, nothing was changed: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        finally:
            hostlock.give_back(hosts, lock)
    return report_outcome(report, rolloutrecord.save(report, inventory), args.inventory)
