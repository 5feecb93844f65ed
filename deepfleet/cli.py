"""`deepfleet`: the control-side command. Each command group lives in deepfleet/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per command group; each defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES = ("demo", "pki", "keys", "chat", "converge", "rollout", "status", "model", "rollback",
                   "lock", "bundle", "audit", "dashboards", "backup")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepfleet", description="From a laptop to a secured, "
                                     "OpenAI-compatible DeepSeek endpoint on your hosts.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"deepfleet.commands.{name}").register(commands)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, ValueError) as exc:
        print(f"deepfleet: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
