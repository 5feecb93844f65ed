"""`deepfleet keys create NAME`."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    keys = commands.add_parser("keys", help="API keys for the gateway")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create a key; it is shown only once")
    create.add_argument("name")
    create.add_argument("--keyring", type=Path, default=None, help="default: <state>/api-keys.json")
    create.set_defaults(func=create_command)


def create_command(args) -> int:
    from ..apikeys import create_key
    from ..paths import state_dir

    keyring = args.keyring or state_dir() / "api-keys.json"
    key = create_key(keyring, args.name)
    print(f"created API key '{args.name}' in {keyring}; store it now, it is not shown again:")
    print(key)
    return 0
