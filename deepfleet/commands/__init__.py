"""The `deepfleet` command groups, one module each (registered in deepfleet/cli.py)."""

import sys


def log(message: str) -> None:
    """Progress for humans, on stderr (stdout stays for results)."""
    print(f"==> {message}", file=sys.stderr, flush=True)
