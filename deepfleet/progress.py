"""Progress for long byte-moving work (encrypting, verifying, pushing models): a rich bar with
bytes/s on a terminal, one summary line otherwise (logs, deploy output)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn


def rate(nbytes: int, seconds: float) -> str:
    """'1.07 GB in 8.1 s (132.5 MB/s)'."""
    return f"{nbytes / 1e9:.2f} GB in {seconds:.1f} s ({nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)"


@contextlib.contextmanager
def byte_progress(description: str, total: int, log: Callable[[str], None] | None = None
                  ) -> Iterator[Callable[[int], None]]:
    """Yields `advance(nbytes)`; shows a bar on a terminal and ends with a summary through `log`."""
    console = Console(stderr=True)
    started = time.monotonic()
    done = 0
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            bar.update(task, advance=nbytes)

        yield advance
    (log or (lambda message: print(message, file=sys.stderr)))(
        f"{description}: {rate(done, time.monotonic() - started)}")
