"""`deepfleet keys create NAME [limits] [budgets] [--expires 90d]`, `keys rotate NAME [--grace 24h]
[INVENTORY]`, `keys revoke NAME [INVENTORY]`, `keys push INVENTORY`, `keys list`, `keys usage
INVENTORY|DIR [--since --by day|key|model] [--csv]`.

With an INVENTORY, revoke and rotate change the keyring the inventory's gateways use and push the
host key file to every gateway at once (deepfleet/keypush.py), confirming each one reads it: a
revoked key is refused everywhere when the command returns (exit 1 names a gateway that did not
confirm; the next deploy or `keys push` brings it along). Without, the next deploy applies them.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEPLOY_HINT = ("push it to the gateways: deepfleet keys push INVENTORY (or deploy: the gateways pick it up "
               "without a restart)")


def register(commands) -> None:
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--keyring", type=Path, default=None,
                        help="default: the inventory's gateway_api_keyring, else <state>/api-keys.json")
    keys = commands.add_parser("keys", help="API keys for the gateway")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", parents=[common], help="create a key; it is shown only once")
    create.add_argument("name")
    create.add_argument("--rpm", type=int, help="requests per minute (default: the gateway's; 0 = unlimited)")
    create.add_argument("--tpm", type=int, help="tokens per minute, prompt + completion (0 = unlimited)")
    create.add_argument("--concurrency", type=int, help="requests in flight at once (0 = unlimited)")
    create.add_argument("--models", nargs="+", help="the only models this key may use (default: all)")
    create.add_argument("--audit-content", choices=["full", "sha256"],
                        help="audit prompts and completions in full or as SHA-256 only (default: the gateway's)")
    create.add_argument("--tokens-per-day", type=int, help="budget: tokens per UTC day (default: none)")
    create.add_argument("--tokens-per-month", type=int, help="budget: tokens per calendar month, UTC")
    create.add_argument("--requests-per-day", type=int, help="budget: requests per UTC day")
    create.add_argument("--expires", help="a duration (90d, 12h, 2w) or an ISO time (2026-12-31T00:00:00Z)")
    create.set_defaults(func=create_command)
    rotate = sub.add_parser("rotate", parents=[common], help="a new secret for a key; the old one works for --grace")
    rotate.add_argument("name")
    rotate.add_argument("inventory", type=Path, nargs="?", help="push the key file to this fleet's gateways now")
    rotate.add_argument("--grace", default="24h", help="how long the old secret stays valid (default 24h)")
    rotate.add_argument("--expires", help="the new secret's expiry (default: the old secret's lifetime again)")
    rotate.set_defaults(func=rotate_command)
    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key (with INVENTORY: refused everywhere now)")
    revoke.add_argument("name")
    revoke.add_argument("inventory", type=Path, nargs="?", help="push the key file to this fleet's gateways now")
    revoke.set_defaults(func=revoke_command)
    push = sub.add_parser("push", parents=[common], help="push the host key file to every gateway of a fleet now")
    push.add_argument("inventory", type=Path)
    push.set_defaults(func=push_command)
    listing = sub.add_parser("list", parents=[common], help="keys, their limits and state (never the keys themselves)")
    listing.set_defaults(func=list_command)
    usage = sub.add_parser("usage", help="requests, tokens and refusals from the gateways' audit logs")
    usage.add_argument("source", type=Path, help="an inventory (its gateways' logs are pulled and verified first, "
                       "as `deepfleet audit pull` does), or a directory of audit logs")
    usage.add_argument("--since", help="a date (2026-06-01), a UTC time, or a duration back from now (7d)")
    usage.add_argument("--by", choices=["day", "key", "model"], default="day", help="one row per ... (default day)")
    usage.add_argument("--csv", action="store_true", help="CSV instead of a table")
    usage.add_argument("--no-pull", action="store_true", help="use the copies already pulled")
    usage.set_defaults(func=usage_command)


def _keyring(args, fleet=None) -> Path:
    """--keyring, else the keyring of the fleet's gateways, else <state>/api-keys.json."""
    from roles.common import control_path

    from ..apikeys import KeyringError
    from ..paths import state_dir

    if fleet is not None:
        used = {control_path(g.settings["gateway_api_keyring"], "gateway_api_keyring") for g in fleet.gateways}
        if len(used) != 1:
            raise KeyringError(f"the gateways of {fleet.inventory} use {len(used)} keyrings "
                               f"({', '.join(map(str, sorted(used))) or 'none'}); push to one fleet at a time")
        keyring = used.pop()
        if args.keyring and args.keyring.resolve() != keyring.resolve():
            raise KeyringError(f"--keyring {args.keyring} is not the keyring of {fleet.inventory}'s gateways "
                               f"({keyring}); leave --keyring out")
        return keyring
    return args.keyring or state_dir() / "api-keys.json"


def _fleet(inventory: Path | None):
    if inventory is None:
        return None
    from . import log
    from ..fleet import describe_fleet

    log(f"describing the fleet of {inventory}")
    return describe_fleet(inventory.resolve())


def _push(fleet, keyring: Path) -> int:
    """The keyring's host key file to every gateway of `fleet`; 0 when each confirmed."""
    from ..apikeys import host_key_file, load_keyring
    from ..keypush import push_key_file

    results = push_key_file(fleet, host_key_file(load_keyring(keyring)))
    for result in results:
        state = "OK" if result.confirmed else "FAILED"
        print(f"{result.gateway}: {state}: {result.detail} ({result.seconds:.1f} s)")
    if not results:
        print(f"deepfleet: {fleet.inventory} has no gateway", file=sys.stderr)
        return 1
    if not all(result.confirmed for result in results):
        print("deepfleet: not every gateway confirmed the new key file; fix the one(s) named above and run "
              "`deepfleet keys push INVENTORY` (or deploy)", file=sys.stderr)
        return 1
    return 0


def create_command(args) -> int:
    from ..apikeys import create_key

    keyring = _keyring(args)
    key = create_key(keyring, args.name, rpm=args.rpm, tpm=args.tpm, concurrency=args.concurrency,
                     models=args.models, audit_content=args.audit_content, tokens_per_day=args.tokens_per_day,
                     tokens_per_month=args.tokens_per_month, requests_per_day=args.requests_per_day,
                     expires=args.expires)
    print(f"created API key '{args.name}' in {keyring}; store it now, it is not shown again:")
    print(key)
    print(DEPLOY_HINT)
    return 0


def rotate_command(args) -> int:
    from ..apikeys import rotate_key

    fleet = _fleet(args.inventory)
    keyring = _keyring(args, fleet)
    key, record = rotate_key(keyring, args.name, grace=args.grace, expires=args.expires)
    old = record["previous"][-1]["expires"]
    expiry = f", expires {record['expires']}" if record.get("expires") else ""
    print(f"rotated API key '{args.name}' in {keyring}: the old secret works until {old}; the new one{expiry} "
          "is shown only now:")
    print(key)
    if fleet is None:
        print(DEPLOY_HINT)
        return 0
    return _push(fleet, keyring)


def revoke_command(args) -> int:
    from ..apikeys import revoke_key

    fleet = _fleet(args.inventory)
    keyring = _keyring(args, fleet)
    revoke_key(keyring, args.name)
    if fleet is None:
        print(f"revoked API key '{args.name}' in {keyring}; {DEPLOY_HINT} (in-flight requests finish)")
        return 0
    print(f"revoked API key '{args.name}' in {keyring}; pushing the key file to the gateways of {args.inventory}")
    return _push(fleet, keyring)


def push_command(args) -> int:
    fleet = _fleet(args.inventory)
    return _push(fleet, _keyring(args, fleet))


def list_command(args) -> int:
    import datetime

    from ..apikeys import load_keyring, parse_utc

    def show(value) -> str:
        if value is None:
            return "default"
        if isinstance(value, list):
            return ",".join(value)
        return "unlimited" if value == 0 else str(value)

    def budget(record) -> str:
        parts = [f"{record[f]} {label}" for f, label in (("tokens_per_day", "tok/day"),
                                                         ("tokens_per_month", "tok/month"),
                                                         ("requests_per_day", "req/day")) if record.get(f)]
        return ", ".join(parts) or "none"

    now = datetime.datetime.now(datetime.timezone.utc)
    rows = [("NAME", "CREATED", "RPM", "TPM", "CONCURRENCY", "MODELS", "AUDIT", "BUDGET", "EXPIRES", "STATE")]
    for r in load_keyring(_keyring(args)):
        if r.get("revoked"):
            state = f"revoked {r['revoked']}"
        elif r.get("expires") and parse_utc(r["expires"], "expires") <= now:
            state = "expired"
        else:
            graced = [p for p in r.get("previous", []) if parse_utc(p["expires"], "expires") > now]
            state = f"active (old secret until {graced[-1]['expires']})" if graced else "active"
        rows.append((r["id"], r.get("created", "?"), show(r.get("rpm")), show(r.get("tpm")),
                     show(r.get("concurrency")), show(r.get("models")) if r.get("models") else "all",
                     r.get("audit_content") or "default", budget(r), r.get("expires") or "never", state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def usage_command(args) -> int:
    from roles.common import RoleError

    from ..fleet import FleetError
    from ..paths import state_dir
    from ..usage import ChainBroken, UsageError, audit_dirs, parse_since, render_csv, render_table, summarize
    from .audit import pull_fleet

    try:
        since = parse_since(args.since)
        if args.source.is_dir():
            directories = audit_dirs(args.source)
        else:
            if not args.source.is_file():
                raise UsageError(f"{args.source} is neither an inventory nor a directory of audit logs")
            fleet = _fleet(args.source)
            if not fleet.gateways:
                raise UsageError(f"{args.source} has no gateway, so no audit log to read")
            into = state_dir() / "audit"
            if not args.no_pull and not pull_fleet(fleet, into):
                print("deepfleet: an audit log did not verify (see above); usage is computed from verified logs only",
                      file=sys.stderr)
                return 1
            directories = [into / gateway.name for gateway in fleet.gateways]
            missing = [d.name for d in directories if not d.is_dir()]
            if missing:
                raise UsageError(f"no audit copy for {', '.join(missing)} in {into}; run without --no-pull")
        rows = summarize(directories, args.by, since)
    except (UsageError, ChainBroken, FleetError, RoleError) as exc:
        print(f"deepfleet: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_csv(rows, args.by) if args.csv else render_table(rows, args.by))
    return 0
