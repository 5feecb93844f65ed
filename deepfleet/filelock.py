"""An exclusive lock on a file that waits without blocking the process: pyinfra prepares hosts in
greenlets (gevent), and a blocking flock in one greenlet stops the whole process, including the
greenlet that holds the lock while it waits on a subprocess (a deadlock on a cold wheelhouse cache
with several hosts). Polling with time.sleep, which gevent turns into a yield, lets it finish."""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path, poll_s: float = 0.05):
    """Hold an exclusive flock on `path` (created if missing) for the `with` block."""
    with open(path, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(poll_s)
        yield
