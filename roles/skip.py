"""Saying why a role does nothing on a host, in the deploy's output, without changing the host."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import operation


def skip_role(role: str, reason: str) -> None:
    """Log `<host> <role>: skipped, <reason>` (once, while planning) and record a no-change operation
    named `<role>: skipped` whose noop note carries the reason, so plans and `-v` runs show it too."""
    logger.info(f"{host.print_prefix}{role}: skipped, {reason}")
    _skipped(name=f"{role}: skipped", reason=reason)


@operation()
def _skipped(reason: str):
    host.noop(reason)
    yield from ()
