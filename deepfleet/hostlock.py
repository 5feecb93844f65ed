"""A lock on each host against a second fleet operation: `deepfleet rollout`, `up` and `rollback`
take `<deepfleet_home>/lock.json` on every host they act on before they change anything, and give it
back when they end (also when they fail or are interrupted). The lock names its operation, id,
owner, control machine, process and time; a lock whose process is gone stays until someone breaks it
on purpose: `deepfleet unlock INVENTORY --lock ID`.

Taking it is one `ln` of a complete file (atomic: it fails when the name exists), so two operations
racing for a host cannot both win, and a reader never sees half a lock.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import socket
import time

from .fleet import FleetHost
from .remote import RemoteError, run_remote
from .rolloutplan import lock_description

_TAKE = ('mkdir -p "$(dirname "$1")" && tmp="$1.$$" && umask 077 && printf %s "$2" > "$tmp" && '
         'if ln "$tmp" "$1" 2>/dev/null; then rm -f "$tmp"; echo taken; else rm -f "$tmp"; cat "$1"; fi')
_GIVE_BACK = 'if grep -qF "$2" "$1" 2>/dev/null; then rm -f "$1"; echo removed; fi; true'


class HostLocked(RuntimeError):
    """A host is locked by another operation; the message names the lock and what to do."""


def lock_path(host: FleetHost) -> str:
    return f"{host.settings['deepfleet_home']}/lock.json"


def new_lock(operation: str, lock_id: str | None = None) -> dict:
    """This process's lock record for `operation` (rollout, up, rollback)."""
    return {"id": lock_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}", "operation": operation,
            "owner": f"{getpass.getuser()}@{socket.gethostname()}", "machine": socket.gethostname(),
            "pid": os.getpid(), "since": time.time()}


def _encoded(lock: dict) -> str:
    return json.dumps(lock, separators=(",", ":"))


def _id_marker(lock_id: str) -> str:
    return f'"id":{json.dumps(lock_id)},'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(lock: dict) -> tuple[str, bool]:
    """(how the lock reads, whether it is stale), as seen from this machine."""
    return lock_description(lock, time.time(), socket.gethostname(), _pid_alive)


def take(hosts: list[FleetHost], lock: dict, inventory: str = "INVENTORY") -> None:
    """Lock every host for `lock`, or none: HostLocked names the first lock held by another operation
    (those taken so far are given back). A host already locked with the same id is ours (a resume)."""
    taken: list[FleetHost] = []
    for host in hosts:
        result = run_remote(host.ssh, ["sh", "-c", _TAKE, "sh", lock_path(host), _encoded(lock)], sudo=host.sudo,
                            timeout=60)
        answer = result.stdout.strip()
        if answer == "taken":
            taken.append(host)
            continue
        try:
            held = json.loads(answer)
        except ValueError:
            held = {}
        if held.get("id") == lock["id"]:
            continue
        give_back(taken, lock)
        text, stale = describe(held)
        hint = (f"its process is gone: the lock is stale; break it with `deepfleet unlock {inventory} --lock "
                f"{held.get('id')}`" if stale else
                "wait until it ends; if it is gone (its machine lost), break the lock with "
                f"`deepfleet unlock {inventory} --lock {held.get('id')}`")
        raise HostLocked(f"{host.name} is locked by {text} ({lock_path(host)}); {hint}")


def give_back(hosts: list[FleetHost], lock: dict) -> None:
    """Remove the lock from the hosts where it is still ours (a host that cannot be reached keeps it)."""
    for host in hosts:
        with contextlib.suppress(RemoteError):
            run_remote(host.ssh, ["sh", "-c", _GIVE_BACK, "sh", lock_path(host), _id_marker(lock["id"])],
                       sudo=host.sudo, timeout=60)


def break_lock(hosts: list[FleetHost], lock_id: str) -> list[str]:
    """Remove the lock `lock_id` wherever it is held; the names of the hosts it was removed from."""
    removed = []
    for host in hosts:
        result = run_remote(host.ssh, ["sh", "-c", _GIVE_BACK, "sh", lock_path(host), _id_marker(lock_id)],
                            sudo=host.sudo, timeout=60)
        if result.stdout.strip() == "removed":
            removed.append(host.name)
    return removed


def show(hosts: list[FleetHost]) -> dict[str, dict | None]:
    """The lock record on each host (None where there is none)."""
    locks = {}
    for host in hosts:
        result = run_remote(host.ssh, ["sh", "-c", 'cat "$1" 2>/dev/null; true', "sh", lock_path(host)],
                            sudo=host.sudo, timeout=60)
        try:
            locks[host.name] = json.loads(result.stdout) if result.stdout.strip() else None
        except ValueError:
            locks[host.name] = {"id": "?", "operation": "unreadable lock file"}
    return locks


@contextlib.contextmanager
def locked(hosts: list[FleetHost], operation: str, inventory: str, lock_id: str | None = None):
    """Hold the lock on `hosts` for the `with` block (given back however it ends); yields the lock."""
    lock = new_lock(operation, lock_id)
    take(hosts, lock, inventory)
    try:
        yield lock
    finally:
        give_back(hosts, lock)
