"""`deepfleet-runtime gateway-admin status|drain|undrain|probe|keys`: the gateway's admin socket, from a shell.

Rolling updates drain a replica with `gateway-admin drain NAME --wait 60` (exit 0 once nothing is
in flight on it, 1 if requests were still running at the deadline), update it, check it with
`gateway-admin probe NAME --model M` (one completion through this gateway to that replica, while
it is still drained; exit 0 when it answered tokens, 1 when not), then `undrain`.
`gateway-admin keys --reload` reads the API key file now and prints the SHA-256 of what is in force.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_SOCKET = Path("/run/deepfleet-gateway/admin.sock")


def register(commands) -> None:
    parser = commands.add_parser("gateway-admin", help="show, drain or undrain the gateway's upstreams")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help=f"default: {DEFAULT_SOCKET}")
    sub = parser.add_subparsers(dest="admin_command", required=True)
    sub.add_parser("status", help="every upstream's state (JSON)")
    drain = sub.add_parser("drain", help="send no new requests to an upstream")
    drain.add_argument("name")
    drain.add_argument("--wait", type=float, default=0.0, help="seconds to wait for in-flight requests")
    undrain = sub.add_parser("undrain", help="send requests to an upstream again")
    undrain.add_argument("name")
    probe = sub.add_parser("probe", help="one greedy completion on an upstream, drained or not (smoke test)")
    probe.add_argument("name")
    probe.add_argument("--model", required=True)
    probe.add_argument("--prompt", default="Hello")
    probe.add_argument("--max-tokens", type=int, default=8)
    keys = sub.add_parser("keys", help="the API key file in force (its SHA-256)")
    keys.add_argument("--reload", action="store_true", help="read the key file now, even if it looks unchanged")
    parser.set_defaults(func=run)


def run(args) -> int:
    import httpx

    transport = httpx.HTTPTransport(uds=str(args.socket))
    try:
        timeout = 300.0 if args.admin_command == "probe" else getattr(args, "wait", 0.0) + 10
        with httpx.Client(transport=transport, base_url="http://gateway", timeout=timeout) as client:
            if args.admin_command == "status":
                response = client.get("/upstreams")
            elif args.admin_command == "drain":
                response = client.post(f"/upstreams/{args.name}/drain", params={"wait_s": args.wait})
            elif args.admin_command == "keys":
                response = client.post("/keys/reload") if args.reload else client.get("/keys")
            elif args.admin_command == "probe":
                response = client.post(f"/upstreams/{args.name}/probe", json={
                    "model": args.model, "prompt": args.prompt, "max_tokens": args.max_tokens})
            else:
                response = client.post(f"/upstreams/{args.name}/undrain")
    except httpx.TransportError as exc:
        print(f"deepfleet-runtime gateway-admin: cannot reach the admin socket {args.socket} ({exc}); is the "
              "gateway running, and may this user open the socket (try sudo)?", file=sys.stderr)
        return 2
    body = response.json()
    print(json.dumps(body, indent=1))
    if args.admin_command == "probe" and response.status_code == 502:
        return 1
    if response.status_code != 200:
        return 2
    return 0 if body.get("idle", True) else 1
