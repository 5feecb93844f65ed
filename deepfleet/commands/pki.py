"""`deepfleet pki init`."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    pki = commands.add_parser("pki", help="the fleet's internal certificate authority")
    sub = pki.add_subparsers(dest="pki_command", required=True)
    init = sub.add_parser("init", help="create the CA (its key stays on this machine)")
    init.add_argument("--dir", type=Path, default=None, help="default: <state>/pki")
    init.set_defaults(func=init_command)


def init_command(args) -> int:
    from ..paths import state_dir
    from ..pki import init_ca

    paths, created = init_ca(args.dir or state_dir() / "pki")
    print(f"{'created' if created else 'kept the existing'} CA: {paths.cert} (key: {paths.key}, mode 0600)")
    return 0
