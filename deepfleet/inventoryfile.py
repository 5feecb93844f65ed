"""Reading a pyinfra inventory file (and its group_data/<group>.py) outside a pyinfra run.

The same merge as pyinfra's CLI: each module-level list is a group of hosts (names, or (name, data)
tuples), group_data/<group>.py holds that group's settings, host data wins over group data.
pyinfra_cli itself is not imported: it monkey-patches the whole process for gevent.
"""

from __future__ import annotations

import runpy
from pathlib import Path

from pyinfra.api.inventory import Inventory


def load_inventory(path: Path, override_data: dict | None = None) -> Inventory:
    """The hosts and groups of the inventory file `path`."""
    path = Path(path)
    groups, hosts = {}, {}
    for group, members in runpy.run_path(str(path)).items():
        if group.startswith("_") or not isinstance(members, list):
            continue
        entries = [member if isinstance(member, tuple) else (member, {}) for member in members]
        for name, data in entries:
            hosts.setdefault(name, {}).update(data)
        data_file = path.parent / "group_data" / f"{group}.py"
        data = runpy.run_path(str(data_file)) if data_file.exists() else {}
        groups[group] = ([name for name, _ in entries], {k: v for k, v in data.items() if not k.startswith("__")})
    return Inventory((list(hosts.items()), {}), override_data=override_data, **groups)
