"""`deepfleet`: the control-side command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .paths import state_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepfleet", description="From a laptop to a secured, "
                                     "OpenAI-compatible DeepSeek endpoint on your hosts.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="deploy to one disposable local host and ask it a question")
    demo.add_argument("--down", action="store_true", help="remove everything the demo created")

    pki = commands.add_parser("pki", help="the fleet's internal certificate authority")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True)
    pki_init = pki_commands.add_parser("init", help="create the CA (its key stays on this machine)")
    pki_init.add_argument("--dir", type=Path, default=None, help="default: <state>/pki")

    keys = commands.add_parser("keys", help="API keys for the gateway")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_create = keys_commands.add_parser("create", help="create a key; it is shown only once")
    keys_create.add_argument("name")
    keys_create.add_argument("--keyring", type=Path, default=None, help="default: <state>/api-keys.json")

    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (RuntimeError, ValueError) as exc:
        print(f"deepfleet: {exc}", file=sys.stderr)
        return 1


def _dispatch(args) -> int:
    if args.command == "demo":
        return _demo(args)
    if args.command == "pki":
        from .pki import init_ca

        pki_dir = args.dir or state_dir() / "pki"
        paths, created = init_ca(pki_dir)
        print(f"{'created' if created else 'kept the existing'} CA: {paths.cert} (key: {paths.key}, mode 0600)")
        return 0
    if args.command == "keys":
        from .apikeys import create_key

        keyring = args.keyring or state_dir() / "api-keys.json"
        key = create_key(keyring, args.name)
        print(f"created API key '{args.name}' in {keyring}; store it now, it is not shown again:")
        print(key)
        return 0
    raise AssertionError(args.command)


def _demo(args) -> int:
    from .demo import demo_down, demo_up

    def log(message: str) -> None:
        print(f"==> {message}", file=sys.stderr, flush=True)

    if args.down:
        demo_down(log)
        return 0
    summary = demo_up(log)
    print()
    print(f"Endpoint   {summary['endpoint']}")
    print(f"Model      {summary['model']}")
    print(f"CA bundle  {summary['ca_cert']}")
    print(f"API key    in {summary['connection_file']} (mode 0600, field api_key)")
    print(f"Changes    {summary['changes']} on the host this run (0 means it was already converged)")
    print(f"Took       {summary['seconds']} s")
    print(f"Answer     {summary['answer']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
