"""`deepfleet-runtime gateway --config gateway.yaml`: the TLS 1.3 gateway in front of the runtime."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("gateway", help="run the TLS gateway in gateway.yaml")
    parser.add_argument("--config", required=True, type=Path)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..gateway.app import create_gateway_app
    from ..gateway.config import load_gateway_config
    from ..serving import serve

    config = load_gateway_config(args.config)
    serve(create_gateway_app(config), config.listen.host, config.listen.port,
          tls_cert=config.tls.cert, tls_key=config.tls.key)
    return 0
