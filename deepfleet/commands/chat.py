"""`deepfleet chat "prompt"`: ask a gateway, retrying as its FAQ advises (Retry-After, backoff)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("chat", help="ask the endpoint one question (honours Retry-After, backs off)")
    parser.add_argument("prompt")
    parser.add_argument("--connection", type=Path, default=None,
                        help="connection file {base_url or base_urls, ca_cert, api_key, model}; default: the demo's")
    parser.add_argument("--base-url", help="e.g. https://gw1:8443/v1, or several gateways comma-separated "
                        "(failed over in order; the key then comes from DEEPFLEET_API_KEY)")
    parser.add_argument("--ca-cert", type=Path, help="CA bundle for --base-url (default: <state>/pki/ca.crt)")
    parser.add_argument("--model", help="default: the connection's, else the first the endpoint lists")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 answers greedily (the same answer every time)")
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--retries", type=int, default=5)
    parser.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..client import GatewayClient
    from ..paths import state_dir

    if args.base_url:
        key = os.environ.get("DEEPFLEET_API_KEY")
        if not key:
            print("deepfleet chat: set DEEPFLEET_API_KEY to the API key (it is never taken from the command "
                  "line, where other users could see it)", file=sys.stderr)
            return 2
        ca = args.ca_cert or state_dir() / "pki" / "ca.crt"
        client = GatewayClient(args.base_url, key, ca, args.model, max_retries=args.retries)
    else:
        connection = args.connection or state_dir() / "demo" / "connection.json"
        if not connection.exists():
            print(f"deepfleet chat: {connection} does not exist; pass --connection FILE, or --base-url with "
                  "DEEPFLEET_API_KEY (or run `deepfleet demo`)", file=sys.stderr)
            return 2
        client = GatewayClient.from_connection(connection, max_retries=args.retries)
        client.model = args.model or client.model
    params = {} if args.temperature is None else {"temperature": args.temperature}
    with client:
        if args.stream:
            for piece in client.chat_stream(args.prompt, args.max_tokens, **params):
                print(piece, end="", flush=True)
            print()
        else:
            print(client.chat(args.prompt, args.max_tokens, **params))
    return 0
