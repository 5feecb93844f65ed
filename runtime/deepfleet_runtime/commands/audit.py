"""`deepfleet-runtime audit verify DIR [--public-key PEM]`: check the gateway's audit chain."""

from __future__ import annotations

import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("audit", help="the gateway's hash-chained audit log")
    sub = parser.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="report OK or the first broken or missing record")
    verify.add_argument("dir", type=Path, help="the audit directory (gateway.yaml audit.dir)")
    verify.add_argument("--public-key", type=Path, help="Ed25519 public key (PEM) to check signed checkpoints")
    verify.set_defaults(func=run_verify)


def run_verify(args) -> int:
    from ..gateway.auditchain import ChainBroken, verify_chain

    public_key = None
    if args.public_key:
        from cryptography.hazmat.primitives import serialization

        try:
            public_key = serialization.load_pem_public_key(args.public_key.read_bytes())
        except (OSError, ValueError) as exc:
            print(f"deepfleet-runtime audit: cannot read public key {args.public_key}: {exc}", file=sys.stderr)
            return 2
    if not args.dir.is_dir():
        print(f"deepfleet-runtime audit: {args.dir} is not a directory", file=sys.stderr)
        return 2
    try:
        report = verify_chain(args.dir, public_key)
    except ChainBroken as exc:
        print(f"BROKEN: {exc}")
        return 1
    print(f"OK: {report.records} records (seq {report.first_seq}-{report.last_seq}) in {report.files} "
          f"file(s); last hash {report.last_hash}")
    if report.open_requests:
        ids = ", ".join(report.interrupted[:10]) + (", ..." if len(report.open_requests) > 10 else "")
        print(f"     {len(report.open_requests)} request(s) started without an end record: interrupted (the "
              f"gateway stopped during them), or still running if it runs: {ids}")
    if report.retention:
        print(f"     older records were removed by retention; the chain starts at record {report.first_seq}")
    if report.checkpoints:
        if args.public_key:
            print(f"     {report.checkpoints} signed checkpoint(s) verified; signed through record "
                  f"{report.signed_through}")
        else:
            print(f"     {report.checkpoints} checkpoint(s) not verified (pass --public-key)")
    return 0
