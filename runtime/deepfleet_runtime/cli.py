"""`deepfleet-runtime`: the host-side command (serve, gateway, tiny-model, wait-ready)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .configfile import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepfleet-runtime", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the model in runtime.yaml (OpenAI-compatible)")
    serve.add_argument("--config", required=True, type=Path)

    gateway = commands.add_parser("gateway", help="run the TLS gateway in gateway.yaml")
    gateway.add_argument("--config", required=True, type=Path)

    tiny = commands.add_parser("tiny-model", help="build a tiny random-weight DeepSeek-V3 model")
    tiny.add_argument("--out", required=True, type=Path)
    tiny.add_argument("--seed", type=int, default=0)

    wait = commands.add_parser("wait-ready", help="wait until URL answers 200 (exit 1 on timeout)")
    wait.add_argument("url")
    wait.add_argument("--timeout", type=float, default=600.0)
    wait.add_argument("--cafile", type=Path, help="CA bundle for an https URL")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"deepfleet-runtime: {exc}", file=sys.stderr)
        return 2


def _serve(args) -> int:
    from .config import load_runtime_config
    from .engines.transformers_engine import TransformersEngine
    from .server import create_app
    from .serving import serve

    config = load_runtime_config(args.config)
    engine = TransformersEngine(config.model.name, config.model.path, config.device, config.dtype)
    serve(create_app(engine, config.limits), config.server.host, config.server.port)
    return 0


def _gateway(args) -> int:
    from .gateway.app import create_gateway_app
    from .gateway.config import load_gateway_config
    from .serving import serve

    config = load_gateway_config(args.config)
    serve(create_gateway_app(config), config.listen.host, config.listen.port,
          tls_cert=config.tls.cert, tls_key=config.tls.key)
    return 0


def _tiny_model(args) -> int:
    from .tinymodel import build_tiny_model

    try:
        out = build_tiny_model(args.out, seed=args.seed)
    except FileExistsError as exc:
        print(f"deepfleet-runtime: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _wait_ready(args) -> int:
    import ssl

    import httpx

    deadline = time.monotonic() + args.timeout
    verify = ssl.create_default_context(cafile=str(args.cafile)) if args.cafile else True
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(args.url, verify=verify, timeout=5.0)
            if response.status_code == 200:
                print(f"ready: {args.url}")
                return 0
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.5)
    print(f"not ready after {args.timeout:.0f}s: {args.url} ({last})", file=sys.stderr)
    return 1


_COMMANDS = {"serve": _serve, "gateway": _gateway, "tiny-model": _tiny_model, "wait-ready": _wait_ready}

if __name__ == "__main__":
    sys.exit(main())
