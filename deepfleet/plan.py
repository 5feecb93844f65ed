"""Reading a dry run: the per-file diffs pyinfra logs with --diff."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DIFF_START = re.compile(r"^\s*\[(?P<host>[^\]]+)\] Will (?:modify|create) (?P<path>\S+)")


def diff_blocks(log: str) -> list[str]:
    """Each file diff in a pyinfra --dry --diff log, as '[host] path' followed by its lines."""
    blocks, current = [], None
    for raw in log.splitlines():
        line = _ANSI.sub("", raw)
        start = _DIFF_START.match(line)
        if start:
            current = [f"--- [{start['host']}] {start['path']}"]
            blocks.append(current)
        elif current is not None and line.strip():
            current.append(line.rstrip())
        else:
            current = None
    return ["\n".join(block) for block in blocks]
