"""Reading a pyinfra inventory file (and its group_data/<group>.py) outside a pyinfra run.

The same merge as pyinfra's CLI: each module-level list is a group of hosts (names, or (name, data)
tuples), a group named after the file holds every host, group_data/<group>.py holds that group's
settings (all.py: every host's), host data wins over group data. pyinfra_cli itself is not
imported: it monkey-patches the whole process for gevent.
"""

from __future__ import annotations

import runpy
import types
from pathlib import Path

from pyinfra.api.inventory import Inventory


def load_inventory(path: Path, override_data: dict | None = None) -> Inventory:
    """The hosts and groups of the inventory file `path`."""
    path = Path(path)
    members_of, hosts = {}, {}
    for group, members in runpy.run_path(str(path)).items():
        if not _is_group(group, members):
            continue
        entries = [member if isinstance(member, tuple) else (member, {}) for member in members]
        for name, data in entries:
            hosts.setdefault(name, {}).update(data)
        members_of[group] = [name for name, _ in entries]
    members_of.setdefault(path.stem, list(hosts))
    groups = {group: (members, _group_data(path.parent / "group_data" / f"{group}.py"))
              for group, members in members_of.items()}
    return Inventory((list(hosts.items()), _group_data(path.parent / "group_data" / "all.py")),
                     override_data=override_data, **groups)


def _group_data(data_file: Path) -> dict:
    if not data_file.exists():
        return {}
    return {key: value for key, value in runpy.run_path(str(data_file)).items() if not key.startswith("__")
            and not isinstance(value, (types.ModuleType, types.FunctionType, type))}


def _is_group(key: str, value) -> bool:
    if key.startswith("_") or not isinstance(value, list):
        return False
    return all(isinstance(item, str) or (isinstance(item, tuple) and len(item) == 2) for item in value)
