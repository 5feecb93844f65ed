"""`deepfleet audit pull INVENTORY`: copy every gateway's audit log to `<state>/audit/<host>/`
and verify it end to end against what earlier pulls saw (deepfleet/auditpull.py).

Exit codes: 0 every gateway's log verifies and continues the copy; 1 a finding (the table says
which); 2 the fleet could not be described.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import log


def register(commands) -> None:
    parser = commands.add_parser("audit", help="the gateways' audit logs, copied and verified here")
    sub = parser.add_subparsers(dest="audit_command", required=True)
    pull = sub.add_parser("pull", help="copy every gateway's audit log here and verify it end to end")
    pull.add_argument("inventory", type=Path, help="a pyinfra inventory, e.g. inventories/fleet.py")
    pull.add_argument("--into", type=Path, default=None,
                      help="where the copies live (default <state>/audit/<host>/, .deepfleet/audit/ unless "
                           "$DEEPFLEET_HOME says otherwise)")
    pull.set_defaults(func=run_pull)


def run_pull(args) -> int:
    from roles.common import RoleError

    from ..fleet import FleetError, describe_fleet
    from ..paths import state_dir

    log(f"describing the fleet of {args.inventory}")
    try:
        fleet = describe_fleet(args.inventory.resolve())
    except FleetError as exc:
        print(f"deepfleet: {exc}", file=sys.stderr)
        return 2
    into = args.into or state_dir() / "audit"
    try:
        return 0 if pull_fleet(fleet, into) else 1
    except RoleError as exc:
        print(f"deepfleet: {exc}", file=sys.stderr)
        return 2


def pull_fleet(fleet, into: Path) -> bool:
    """Pull and verify every gateway's audit log of `fleet` into `into/<gateway>/`, printing one line
    per gateway (and per finding); True when every one verifies. RoleError for a bad gateway_pki_dir."""
    from roles.common import control_path

    from ..auditpull import gateway_source, public_key_of, pull

    failed = False
    for gateway in fleet.gateways:
        settings = gateway.settings
        pki_dir = control_path(settings["gateway_pki_dir"], "gateway_pki_dir")  # as the deploy resolves it
        key = public_key_of(pki_dir, gateway.name)
        if key is None and settings.get("gateway_audit_signing"):
            print(f"{gateway.name}: no audit signing public key in {pki_dir}; checkpoints "
                  "are not verified (deploy the gateway to create it)")
        try:
            report = pull(gateway_source(gateway), into / gateway.name, key)
        except RuntimeError as exc:
            print(f"{gateway.name}: FAILED: {exc}")
            failed = True
            continue
        if report.ok:
            signed = f", signed through record {report.signed_through}" if report.signed_through is not None else ""
            print(f"{gateway.name}: OK: {report.records} records (last {report.last_seq}), {report.new_records} "
                  f"new{signed}; {len(report.interrupted)} started without an end")
        else:
            failed = True
            for finding in report.findings:
                print(f"{gateway.name}: FOUND: {finding}")
    return not failed
