"""`deepfleet locks INVENTORY`: the lock on each host, its owner and age (deepfleet/hostlock.py);
`deepfleet unlock INVENTORY --lock ID`: break lock ID wherever it is held, on purpose (its operation
is gone: a lost control machine, a killed process). Nothing breaks a lock by itself."""

from __future__ import annotations

import sys
from pathlib import Path


def register(commands) -> None:
    show = commands.add_parser("locks", help="show the lock on each host: operation, owner, age")
    show.add_argument("inventory", type=Path, help="the pyinfra inventory")
    show.set_defaults(func=show_command)
    unlock = commands.add_parser("unlock", help="break a lock whose operation is gone")
    unlock.add_argument("inventory", type=Path, help="the pyinfra inventory")
    unlock.add_argument("--lock", required=True, metavar="ID", help="the lock's id (as a refusal or `locks` names it)")
    unlock.set_defaults(func=unlock_command)


def show_command(args) -> int:
    from .. import hostlock
    from ..fleet import describe_fleet

    held = 0
    for name, lock in hostlock.show(list(describe_fleet(args.inventory.resolve()).hosts.values())).items():
        if lock is None:
            print(f"{name}: not locked")
            continue
        held += 1
        text, stale = hostlock.describe(lock)
        print(f"{name}: {text}" + (" - STALE: its process is gone" if stale else ""))
    return 1 if held else 0


def unlock_command(args) -> int:
    from .. import hostlock
    from ..fleet import describe_fleet

    removed = hostlock.break_lock(list(describe_fleet(args.inventory.resolve()).hosts.values()), args.lock)
    if not removed:
        print(f"deepfleet: no host holds lock {args.lock}", file=sys.stderr)
        return 1
    print(f"lock {args.lock} broken on {', '.join(removed)}")
    return 0
