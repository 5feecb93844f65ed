"""`deepfleet-runtime wait-ready URL`: used by deploys to wait until a service answers 200.

A runtime whose model failed to load answers /ready with {"status": "failed"}: waiting longer would
not help, so this stops at once with its reason (exit 1), as it does at the timeout. With `--unit`,
a systemd service whose process exits while it is waited for (it fails, or systemd schedules a
restart) stops the wait at once too, and the unit's last journal lines since the wait began are
printed with the line that says why (a config error, an address in use): the cause, not a timeout.
"""

from __future__ import annotations

import re
import subprocess
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
    parser.add_argument("--unit", help="the systemd service that serves URL: stop when it fails and show its journal")
    parser.add_argument("--served-model", type=Path, metavar="MODELS_DIR/NAME@RELEASE",
                        help="once ready, record this model release's number as served (rollback protection)")
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
    unit = getattr(args, "unit", None)
    started, unit_start = time.monotonic(), _unit_state(unit) if unit else None
    while time.monotonic() < deadline:
        if unit:
            failure = unit_failure(unit, unit_start)
            if failure:
                print(f"will not become ready: {unit} {failure} after {time.monotonic() - started:.0f}s "
                      f"of waiting for {args.url}", file=sys.stderr)
                _print_journal(unit, unit_start["since"])
                return 1
        try:
            response = httpx.get(args.url, verify=verify, timeout=5.0)
            if response.status_code == 200:
                print(f"ready: {args.url}")
                return _record_served(args.served_model) if getattr(args, "served_model", None) else 0
            last = f"HTTP {response.status_code}: {response.text[:300]}"
            if _failed(response):
                print(f"will not become ready: {args.url} ({last})", file=sys.stderr)
                return 1
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.5)
    print(f"not ready after {args.timeout:.0f}s: {args.url} ({last})", file=sys.stderr)
    return 1


def _record_served(release_dir: Path) -> int:
    from ..modelstore.errors import ModelStoreError
    from ..modelstore.hostreleases import ModelReleases, record_served

    name, _, release = release_dir.name.rpartition("@")
    try:
        sequence = record_served(ModelReleases(release_dir.parent, name), release)
    except (OSError, ModelStoreError) as exc:
        print(f"ready, but cannot record {release_dir} as served: {exc}", file=sys.stderr)
        return 1
    print(f"served: {release_dir.name} (release number {sequence})")
    return 0


def _failed(response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == "failed"


def _unit_state(unit: str) -> dict:
    """ActiveState, SubState, Result and NRestarts of `unit` (systemctl show), and when it was read."""
    output = subprocess.run(["systemctl", "show", unit, "--property=ActiveState,SubState,Result,NRestarts"],
                            capture_output=True, text=True).stdout
    state = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    return state | {"since": int(time.time())}


def unit_failure(unit: str, at_start: dict) -> str | None:
    """How `unit` failed since `at_start` (its _unit_state when the wait began), or None while it runs."""
    now = _unit_state(unit)
    if now.get("ActiveState") == "failed":
        return f"failed ({now.get('Result', 'unknown')})"
    if now.get("SubState") == "auto-restart" or now.get("NRestarts", "0") != at_start.get("NRestarts", "0"):
        return f"exited ({now.get('Result', 'unknown')}) and systemd is restarting it"
    return None


def _print_journal(unit: str, since: int, lines: int = 25) -> None:
    journal = subprocess.run(["journalctl", "--unit", unit, "--since", f"@{since}", "--lines", str(lines),
                              "--no-pager", "--output", "cat"], capture_output=True, text=True).stdout
    journal = [line for line in journal.splitlines() if line.strip()]
    causes = [line for line in journal if CAUSE.search(line)]
    print(f"--- last {len(journal)} journal lines of {unit} (journalctl -u {unit}) ---", file=sys.stderr)
    for line in journal:
        print(f"  {line}", file=sys.stderr)
    if causes:
        print(f"cause: {causes[-1].strip()}", file=sys.stderr)


CAUSE = re.compile(r"^deepfleet-runtime: |Error|error while|refus|cannot|not one of|unknown key|required key")
