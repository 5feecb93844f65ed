"""Keep a service's memory out of core dumps: the runtime holds model keys and decrypted weights,
the gateway prompts, completions and the audit signing key.

`keep_memory_private()` runs first in `deepfleet-runtime serve` and `deepfleet-runtime gateway`:
the process becomes non-dumpable (prctl PR_SET_DUMPABLE 0: the kernel writes no core, and other
processes of the same user can neither ptrace it nor read /proc/<pid>/mem), and its core size
limit becomes 0, soft and hard, so neither it nor any child it starts (vLLM's engine process,
whose exec makes it dumpable again) can raise it. The units add LimitCORE=0 and MemorySwapMax=0
(docs/model-format.md, "What stays in memory").
"""

from __future__ import annotations

import ctypes
import resource

PR_SET_DUMPABLE = 4


def keep_memory_private() -> None:
    """Make this process non-dumpable and forbid core files for it and its children."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
