"""`deepfleet-runtime gateway --config gateway.yaml`: the TLS 1.3 gateway in front of the runtime,
with its metrics on a loopback listener and its admin API on a unix socket."""

from __future__ import annotations

import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("gateway", help="run the TLS gateway in gateway.yaml")
    parser.add_argument("--config", required=True, type=Path)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..gateway.app import Gateway
    from ..gateway.audit import AuditError
    from ..gateway.config import load_gateway_config
    from ..gateway.connections import build_gateway_server
    from ..privatememory import keep_memory_private
    from ..serving import SideServer, serve_with_side_servers, tcp_listener, unix_listener

    keep_memory_private()  # prompts, completions and the audit signing key never reach a core dump
    config = load_gateway_config(args.config)
    try:
        gateway = Gateway(config)
        side = []
        if config.metrics:
            side.append(SideServer(gateway.metrics_app, tcp_listener(config.metrics.host, config.metrics.port)))
        if config.admin_socket:
            side.append(SideServer(gateway.admin_app, unix_listener(config.admin_socket)))
    except (AuditError, OSError) as exc:
        print(f"deepfleet-runtime gateway: {exc}", file=sys.stderr)
        return 2
    main, gateway.connections = build_gateway_server(gateway.app, config)
    serve_with_side_servers(main, side)
    return 0
