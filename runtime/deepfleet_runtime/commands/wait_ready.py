"""`deepfleet-runtime wait-ready URL`: used by deploys to wait until a service answers 200.

A runtime whose model failed to load answers /ready with {"status": "failed"}: waiting longer would
not help, so this stops at once with its reason (exit 1), as it does at the timeout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("wait-ready", help="wait until URL answers 200 (exit 1 on timeout or failure)")
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--cafile", type=Path, help="CA bundle for an https URL")
    parser.add_argument("--cert", type=Path, help="client certificate, for a runtime that requires one (mTLS)")
    parser.add_argument("--key", type=Path, help="the client certificate's key")
    parser.set_defaults(func=run)


def run(args) -> int:
    import ssl

    import httpx

    deadline = time.monotonic() + args.timeout
    verify = ssl.create_default_context(cafile=str(args.cafile)) if args.cafile else True
    if args.cert:
        verify = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
        verify.load_cert_chain(str(args.cert), str(args.key) if args.key else None)
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(args.url, verify=verify, timeout=5.0)
            if response.status_code == 200:
                print(f"ready: {args.url}")
                return 0
            last = f"HTTP {response.status_code}: {response.text[:300]}"
            if _failed(response):
                print(f"will not become ready: {args.url} ({last})", file=sys.stderr)
                return 1
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.5)
    print(f"not ready after {args.timeout:.0f}s: {args.url} ({last})", file=sys.stderr)
    return 1


def _failed(response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == "failed"
