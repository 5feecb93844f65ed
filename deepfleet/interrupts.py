"""Interrupts of a fleet operation (Ctrl-C, SIGTERM, the SIGHUP of a lost terminal) that never leave
a step half done: inside `shield()` a signal is only noted, and raised as KeyboardInterrupt when the
shielded step has finished; once one was raised, later signals are only noted, so that the
operation can put its batch back in service."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.shielded = 0
        self.pending: str | None = None  # a signal noted inside a shield
        self.raised = False

    def _handler(self, number, _frame) -> None:
        name = signal.Signals(number).name
        if self.raised:
            self.log(f"{name}: still putting the batch back in service; then it ends")
        elif self.shielded:
            self.pending = self.pending or name
            self.log(f"{name}: the step in progress finishes first, then the batch goes back in service")
        else:
            self.raised = True
            raise KeyboardInterrupt(name)

    @contextlib.contextmanager
    def shield(self):
        """Run the block to its end even when a signal comes; raise KeyboardInterrupt after it then."""
        self.shielded += 1
        try:
            yield
        finally:
            self.shielded -= 1
        if self.pending and not self.shielded and not self.raised:
            self.raised = True
            raise KeyboardInterrupt(self.pending)


_NONE = Interrupts(lambda message: None)
_current = _NONE


@contextlib.contextmanager
def interrupts(log: Callable[[str], None]):
    """Handle SIGINT, SIGTERM and SIGHUP as above for the `with` block (in the main thread)."""
    global _current
    state = Interrupts(log)
    previous = {number: signal.signal(number, state._handler) for number in SIGNALS}
    _current = state
    try:
        yield state
    finally:
        _current = _NONE
        for number, old in previous.items():
            signal.signal(number, old)


def shield():
    """The current operation's shield (a no-op outside `interrupts()`)."""
    return _current.shield()
