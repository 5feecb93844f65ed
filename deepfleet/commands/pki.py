"""`deepfleet pki init`, `deepfleet pki list`."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=None, help="default: <state>/pki")
    pki = commands.add_parser("pki", help="the fleet's internal certificate authority")
    sub = pki.add_subparsers(dest="pki_command", required=True)
    init = sub.add_parser("init", parents=[common], help="create the CA (its key stays on this machine)")
    init.set_defaults(func=init_command)
    listing = sub.add_parser("list", parents=[common], help="the CA and every certificate it issued, with days left")
    listing.set_defaults(func=list_command)


def _pki_dir(args) -> Path:
    from ..paths import state_dir

    return args.dir or state_dir() / "pki"


def init_command(args) -> int:
    from ..pki import init_ca

    paths, created = init_ca(_pki_dir(args))
    print(f"{'created' if created else 'kept the existing'} CA: {paths.cert} (key: {paths.key}, mode 0600)")
    return 0


def list_command(args) -> int:
    from ..pki import RENEW_BEFORE, certificate_status

    rows = certificate_status(_pki_dir(args))
    if not rows:
        print(f"no certificates in {_pki_dir(args)}; create the CA with `deepfleet pki init`")
        return 1
    for row in rows:
        renewable = row["path"].startswith("hosts/") and row["days_left"] < RENEW_BEFORE.days
        due = "  (renewed at the next deploy)" if renewable else ""
        print(f"{row['path']:<32} {row['days_left']:>5} days left  {', '.join(row['names']) or row['subject']}{due}")
    return 0
