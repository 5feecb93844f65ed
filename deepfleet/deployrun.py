"""Running deploys through the pyinfra CLI (so they stay runnable by hand) and reading its results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .paths import PROJECT_ROOT, SITE_DEPLOY


class DeployError(RuntimeError):
    """pyinfra failed; the message carries the end of its log, `log` all of it."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


@dataclass
class DeployResult:
    changed: int  # (operation, host) pairs that changed (or, in a dry run, would change) something
    failed_hosts: list[str]
    changed_by_operation: dict[str, list[str]] = field(default_factory=dict)  # name -> hosts
    conditional: dict[str, list[str]] = field(default_factory=dict)  # dry run: name -> hosts, `_if` ops
    log: str = ""  # pyinfra's whole log (stderr)

    @property
    def changed_operations(self) -> list[str]:
        return list(self.changed_by_operation)

    @property
    def planned(self) -> dict[str, list[str]]:
        """In a dry run: the operations that would change something, with their hosts."""
        return self.changed_by_operation


def run_deploy(inventory: Path, deploy: Path = SITE_DEPLOY, *, dry: bool = False, diff: bool = False,
               limit: tuple[str, ...] = (), verbosity: int = 0, env: dict | None = None,
               echo: bool = True) -> DeployResult:
    """Run `pyinfra --json INVENTORY DEPLOY`; pyinfra's log streams to stderr when `echo`.

    A dry run leaves out -y, because with -y pyinfra skips change detection (and the diffs).
    """
    command = [sys.executable, "-m", "pyinfra", "--json", str(inventory), str(deploy)]
    command += ["--dry"] if dry else ["-y"]
    command += ["--diff"] * diff + (["-" + "v" * verbosity] if verbosity else [])
    for pattern in limit:
        command += ["--limit", pattern]
    # Its own session: a Ctrl-C at the terminal reaches only deepfleet, which ends the deploy itself
    # (and a rollout puts its batch back first).
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout_chunks: list[str] = []
    reader = threading.Thread(target=lambda: stdout_chunks.append(process.stdout.read()), daemon=True)
    reader.start()
    log: list[str] = []
    try:
        for line in process.stderr:
            if echo:
                sys.stderr.write(line)
            log.append(line)
        reader.join()
    except BaseException:
        process.terminate()
        process.wait()
        raise
    stdout = "".join(stdout_chunks)
    if process.wait() != 0:
        detail = "its log is above" if echo else "".join(log[-40:])
        raise DeployError(f"pyinfra exited {process.returncode}; {detail}", "".join(log))
    payload = json.loads(stdout)
    log_text = "".join(log)
    results = payload.get("results")
    if results is None:  # a dry run: what would change
        planned = {op["name"]: op["hosts_with_change"] for op in payload["plan"] if op["hosts_with_change"]}
        conditional = {op["name"]: op["hosts_with_conditional_change"] for op in payload["plan"]
                       if op["hosts_with_conditional_change"]}
        return DeployResult(sum(map(len, planned.values())), [], planned, conditional, log_text)
    changed = {op["name"]: op["success"] for op in results["operations"] if op["success"]}
    return DeployResult(results["totals"]["success"], results["failed_hosts"], changed, {}, log_text)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_WORDS = ("error", "failed", "not ready", "will not become ready", "refused", "exited")


def host_log(log: str, host: str, errors_only: bool = False, lines: int = 6) -> str:
    """The last lines pyinfra logged about `host` (`[host] ...`), the error lines first; with
    `errors_only`, only lines that report an error (empty when there are none)."""
    mine = [_ANSI.sub("", line).strip() for line in log.splitlines() if f"[{host}]" in _ANSI.sub("", line)]
    errors = [line for line in mine if any(word in line.lower() for word in _ERROR_WORDS)]
    if errors_only:
        return " | ".join(errors[-lines:])
    return " | ".join((errors or mine)[-lines:])
