"""`deepfleet keys create NAME [--rpm N] [--tpm N] [--concurrency N] [--models M ...]`, `keys revoke NAME`,
`keys list`. Changes reach hosts with the next deploy; the gateways apply them without a restart."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--keyring", type=Path, default=None, help="default: <state>/api-keys.json")
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
    create.set_defaults(func=create_command)
    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key (hosts refuse it after the next deploy)")
    revoke.add_argument("name")
    revoke.set_defaults(func=revoke_command)
    listing = sub.add_parser("list", parents=[common], help="keys, their limits and state (never the keys themselves)")
    listing.set_defaults(func=list_command)


def _keyring(args) -> Path:
    from ..paths import state_dir

    return args.keyring or state_dir() / "api-keys.json"


def create_command(args) -> int:
    from ..apikeys import create_key

    keyring = _keyring(args)
    key = create_key(keyring, args.name, rpm=args.rpm, tpm=args.tpm, concurrency=args.concurrency,
                     models=args.models, audit_content=args.audit_content)
    print(f"created API key '{args.name}' in {keyring}; store it now, it is not shown again:")
    print(key)
    print("deploy to apply it: pyinfra INVENTORY deploys/site.py -y (gateways pick it up without a restart)")
    return 0


def revoke_command(args) -> int:
    from ..apikeys import revoke_key

    keyring = _keyring(args)
    revoke_key(keyring, args.name)
    print(f"revoked API key '{args.name}' in {keyring}; deploy to apply it (no restart, in-flight requests finish)")
    return 0


def list_command(args) -> int:
    from ..apikeys import load_keyring

    def show(value) -> str:
        if value is None:
            return "default"
        if isinstance(value, list):
            return ",".join(value)
        return "unlimited" if value == 0 else str(value)

    rows = [("NAME", "CREATED", "RPM", "TPM", "CONCURRENCY", "MODELS", "AUDIT", "STATE")]
    for r in load_keyring(_keyring(args)):
        state = f"revoked {r['revoked']}" if r.get("revoked") else "active"
        rows.append((r["id"], r.get("created", "?"), show(r.get("rpm")), show(r.get("tpm")),
                     show(r.get("concurrency")), show(r.get("models")) if r.get("models") else "all",
                     r.get("audit_content") or "default", state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
