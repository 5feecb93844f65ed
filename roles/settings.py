"""Host data checked against the roles' settings before a deploy runs anything.

A role reads its settings by name and falls back to roles/defaults.py, so a misspelt name in an
inventory (`runtime_tensor_parallel_size` for `runtime_vllm_tensor_parallel_size`) would silently
leave the default in force. Every key that carries a role's prefix must therefore be a known
setting; keys without one (pyinfra's own `ssh_*`, `_sudo`, a user's own data) are left alone.
Every setting's value must then be of its declared type and among its allowed values (per engine
where they differ: roles/setting.py), so `runtime_quantization: q4_0` stops the plan, not the host.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pyinfra import host
from pyinfra.api.connectors import get_all_connectors

from .common import RoleError
from .defaults import DEFAULTS, ROLE_PREFIXES, SETTINGS
from .setting import ENGINE_SETTING, declare


def connector_settings() -> set[str]:
    """Host data keys pyinfra's connectors read (e.g. the docker connector's `docker_identifier`)."""
    return {key for connector in get_all_connectors().values() for key in getattr(connector, "data_meta", {})}


def unknown_settings(keys: Iterable[str]) -> list[str]:
    """One message per key that carries a role's prefix but is no setting, with the closest one."""
    allowed = set(DEFAULTS) | connector_settings()
    messages = []
    for key in sorted(keys):
        if key in allowed or not key.startswith(ROLE_PREFIXES):
            continue
        closest = difflib.get_close_matches(key, DEFAULTS, n=1)
        hint = f"did you mean {closest[0]!r}?" if closest else "no setting has a similar name"
        messages.append(f"{key!r} is not a setting ({hint})")
    return messages


def bad_values(values: Mapping[str, Any]) -> list[str]:
    """One message per setting whose value (from `values`, else its default) is of the wrong type or
    not allowed, naming the allowed values."""
    engine = values.get(ENGINE_SETTING, DEFAULTS[ENGINE_SETTING])
    messages = []
    for name, setting in declare(SETTINGS).items():
        problem = setting.problem(name, values.get(name, setting.default), engine)
        if problem:
            messages.append(problem)
    return messages


def check_settings() -> None:
    """Refuse the current host's data when it holds a setting no role knows, or a value a setting does
    not allow (deploys call this first)."""
    data = host.data.dict()
    messages = unknown_settings(data) or bad_values(data)
    if messages:
        raise RoleError(f"host {host.name}: {'; '.join(messages)}. Every setting, with its default, is in "
                        "roles/defaults.py and docs/settings.md; fix it in the inventory's host or group data")
