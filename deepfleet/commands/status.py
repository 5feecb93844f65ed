"""`deepfleet status INVENTORY [--watch [SECONDS]]`: release, readiness (or why not), load and GPU
use per host (deepfleet/status.py, deepfleet/runtimeview.py).

Exit codes: 0 every service runs, every runtime is ready and every replica is healthy and in service
at every gateway; 1 something is not (the table says what); 2 the fleet could not be described.
With --watch the table is redrawn every SECONDS (default 5) until Ctrl-C; the exit code is the last
round's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from . import log


def register(commands) -> None:
    parser = commands.add_parser("status", help="release, readiness, load and GPU use of every host")
    parser.add_argument("inventory", type=Path, help="a pyinfra inventory, e.g. inventories/fleet.py")
    parser.add_argument("--json", action="store_true", help="one JSON object per host, one per line")
    parser.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 5) until Ctrl-C")
    parser.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from ..fleet import FleetError, describe_fleet
    from ..status import fleet_status

    log(f"describing the fleet of {args.inventory}")
    try:
        fleet = describe_fleet(args.inventory.resolve())
    except FleetError as exc:
        print(f"deepfleet: {exc}", file=sys.stderr)
        return 2
    console = Console(width=200)
    code = 1
    try:
        while True:
            statuses = fleet_status(fleet)
            code = 0 if all(status.healthy for status in statuses) else 1
            if args.json:
                for status in statuses:
                    print(json.dumps(dataclasses.asdict(status) | {"healthy": status.healthy}), flush=True)
            else:
                if args.watch:
                    console.clear()
                console.print(_table(args.inventory, statuses))
            if not args.watch:
                return code
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return code


def _table(inventory: Path, statuses):
    from rich.table import Table

    from ..runtimeview import load_summary, runtime_gpu_summary
    from ..status import gateway_summary, gpu_summary

    table = Table(title=f"deepfleet status: {inventory}  ({time.strftime('%H:%M:%S')})")
    for column in ("host", "jobs", "release", "model", "ready", "load", "services", "at the gateways", "GPUs"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        release = status.release or {}
        services = ", ".join(f"{unit.removeprefix('deepfleet-')} {state}" for unit, state in status.units.items())
        runtime = status.runtime
        ready = "-" if runtime is None else "ready" if runtime.ready else f"no: {runtime.why_not[:80]}"
        gpus = runtime_gpu_summary(runtime) if runtime is not None and runtime.gpus else gpu_summary(status.gpus)
        table.add_row(status.name, ", ".join(status.jobs), release.get("id", "-"),
                      "{name}@{release}".format(**release["model"]) if release else "-", ready,
                      load_summary(runtime), status.error or services or "-", gateway_summary(status.at_gateways),
                      gpus, style=None if status.healthy else "red")
    return table
