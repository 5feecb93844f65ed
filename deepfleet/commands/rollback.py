"""`deepfleet rollback INVENTORY [--to RELEASE]`: switch hosts back to an earlier runtime release (the
model release, runtime version and config they served), verified first (deploys/rollback.py)."""

from __future__ import annotations

from pathlib import Path

from . import log


def register(commands) -> None:
    parser = commands.add_parser("rollback", help="switch hosts back to their previous release (model + runtime + config)")
    parser.add_argument("inventory", type=Path, help="the pyinfra inventory, e.g. inventories/mine.py")
    parser.add_argument("--to", metavar="RELEASE", help="a runtime release id kept on the hosts, or a model release "
                        "id (default: the previous release)")
    parser.add_argument("--limit", action="append", default=[], help="only hosts matching this pattern (repeatable)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..deployrun import run_deploy
    from ..paths import ROLLBACK_DEPLOY

    log(f"rolling back {args.inventory} to {args.to or 'the previous release'}")
    result = run_deploy(args.inventory, ROLLBACK_DEPLOY, limit=tuple(args.limit),
                        env={"DEEPFLEET_ROLLBACK_TO": args.to or ""})
    if result.failed_hosts:
        print(f"rollback failed on {', '.join(result.failed_hosts)}; the hosts keep serving their current "
              "release (see the log above)")
        return 1
    print("rolled back; the next site deploy switches back to the inventory's model_source unless you change it")
    return 0
