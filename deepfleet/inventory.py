"""Reading a pyinfra inventory file in this process, the way pyinfra's CLI reads it: its groups (lists
of names or (name, data) tuples), the group named after the file, and group_data/<group>.py next to
it (all.py for every host). pyinfra_cli itself cannot be imported here: importing it monkey-patches
the whole process for gevent.

The control side reads inventories to know the fleet's shape before it runs deploys: `deepfleet
rollout` and `deepfleet status` (which hosts are gateways and gpu nodes, how to reach them over
SSH), and the fixture plans of tests/roles.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import types
from pathlib import Path

from pyinfra.api import Inventory


class InventoryError(ValueError):
    """The inventory file cannot be read; the message names the file and the fix."""


def load_inventory(path: Path, override_data: dict | None = None, env: dict[str, str] | None = None) -> Inventory:
    """The pyinfra Inventory of `path` (with `env` set while the file runs, e.g. DEEPFLEET_HOSTS_FILE)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise InventoryError(f"inventory {path} does not exist; pass a pyinfra inventory file, e.g. inventories/fleet.py")
    with _environment(env or {}):
        try:
            namespace = runpy.run_path(str(path))
        except SystemExit as exc:  # inventories/local.py explains a missing hosts file this way
            raise InventoryError(str(exc)) from None
    groups: dict[str, list] = {key: value for key, value in namespace.items() if _is_group(key, value)}
    if not groups:
        raise InventoryError(f"{path} defines no host group (a list of names or (name, data) tuples)")
    all_hosts: list[str] = []
    for members in groups.values():
        for member in members:
            name = member[0] if isinstance(member, tuple) else member
            if name not in all_hosts:
                all_hosts.append(name)
    groups.setdefault(path.stem, list(all_hosts))
    group_data = _group_data(path.parent / "group_data")
    all_data = group_data.pop("all", {})
    with_data = {name: (members, group_data.get(name, {})) for name, members in groups.items()}
    return Inventory((all_hosts, all_data), override_data=override_data, **with_data)


def _is_group(key: str, value) -> bool:
    if key.startswith("_") or not isinstance(value, list):
        return False
    return all(isinstance(item, str) or (isinstance(item, tuple) and len(item) == 2) for item in value)


def _group_data(directory: Path) -> dict[str, dict]:
    data = {}
    for file in sorted(directory.glob("*.py")) if directory.is_dir() else []:
        attrs = runpy.run_path(str(file))
        data[file.stem] = {key: value for key, value in attrs.items() if not key.startswith("__")
                           and not isinstance(value, (types.ModuleType, types.FunctionType, type))}
    return data


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
