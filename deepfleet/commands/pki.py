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
    init.add_argument("--permit", action="append", default=[], metavar="NAME|NETWORK",
                      help="constrain the CA (X.509 NameConstraints, critical) to this DNS name and the names below "
                           "it, or this IP address/network; repeat for more. Clients then refuse any certificate "
                           "it signs for other names. localhost and 127.0.0.1 are always permitted. Default: no "
                           "constraints (the fleet's names are often not known yet); they cannot be added later "
                           "without a new CA")
    init.set_defaults(func=init_command)
    listing = sub.add_parser("list", parents=[common], help="the CA and every certificate it issued, with days left")
    listing.set_defaults(func=list_command)


def _pki_dir(args) -> Path:
    from ..paths import state_dir

    return args.dir or state_dir() / "pki"


def init_command(args) -> int:
    from ..pki import PkiError, init_ca, name_constraints

    try:
        paths, created = init_ca(_pki_dir(args), permitted=args.permit)
    except PkiError as exc:
        print(f"deepfleet pki init: {exc}")
        return 2
    print(f"{'created' if created else 'kept the existing'} CA: {paths.cert} (key: {paths.key}, mode 0600)")
    permitted = name_constraints(paths.cert)
    if not created and args.permit and permitted is None:
        print("  it has no name constraints, and --permit does not change an existing CA: move it away and run "
              "init again to make a constrained one (every host's certificate is then reissued at the next deploy)")
    print(f"  names it can certify: {', '.join(permitted) if permitted is not None else 'any (no NameConstraints)'}")
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
        if "permitted" in row:
            print(f"{'':<32}   permits only {', '.join(row['permitted'])}")
    return 0
