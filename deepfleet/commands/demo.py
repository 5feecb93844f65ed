"""`deepfleet demo [--down]`."""

from __future__ import annotations

from . import log


def register(commands) -> None:
    parser = commands.add_parser("demo", help="deploy to one disposable local host and ask it a question")
    parser.add_argument("--down", action="store_true", help="remove everything the demo created")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..demo import demo_down, demo_up

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
