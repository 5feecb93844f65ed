"""`deepfleet status INVENTORY`: release, health and GPU use per host (deepfleet/status.py).

Exit codes: 0 every service runs and every replica is healthy and in service at every gateway;
1 something is not (the table says what); 2 the fleet could not be described.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import log


def register(commands) -> None:
    parser = commands.add_parser("status", help="release, health and GPU use of every host")
    parser.add_argument("inventory", type=Path, help="a pyinfra inventory, e.g. inventories/fleet.py")
    parser.add_argument("--json", action="store_true", help="one JSON object per host, one per line")
    parser.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..fleet import FleetError, describe_fleet
    from ..status import fleet_status, gateway_summary, gpu_summary

    log(f"describing the fleet of {args.inventory}")
    try:
        statuses = fleet_status(describe_fleet(args.inventory.resolve()))
    except FleetError as exc:
        print(f"deepfleet: {exc}", file=sys.stderr)
        return 2
    healthy = all(status.healthy for status in statuses)
    if args.json:
        for status in statuses:
            print(json.dumps(status.__dict__ | {"healthy": status.healthy}))
        return 0 if healthy else 1
    table = Table(title=f"deepfleet status: {args.inventory}")
    for column in ("host", "jobs", "release", "model", "services", "at the gateways", "GPUs"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        release = status.release or {}
        services = ", ".join(f"{unit.removeprefix('deepfleet-')} {state}" for unit, state in status.units.items())
        table.add_row(status.name, ", ".join(status.jobs), release.get("id", "-"),
                      "{name}@{release}".format(**release["model"]) if release else "-",
                      status.error or services or "-", gateway_summary(status.at_gateways),
                      gpu_summary(status.gpus), style=None if status.healthy else "red")
    Console(width=160).print(table)
    return 0 if healthy else 1
