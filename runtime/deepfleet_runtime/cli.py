"""`deepfleet-runtime`: the host-side command. Each command lives in deepfleet_runtime/commands/."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .configfile import ConfigError

# One module per command; each defines register(subparsers) and sets `func` on its parser.
COMMAND_MODULES = ("serve", "gateway", "gateway_admin", "audit", "tiny_model", "wait_ready", "model", "release", "plan",
                   "convert_gguf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepfleet-runtime", description="deepfleet's host-side command: "
                                     "inference server, gateway and their tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"deepfleet_runtime.commands.{name}").register(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"deepfleet-runtime: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
