"""Helpers the roles share: settings, control-side paths, host paths."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host

from deepfleet.paths import PROJECT_ROOT, cache_dir, state_dir

TEMPLATES = PROJECT_ROOT / "templates"


class RoleError(RuntimeError):
    """A setting is missing or wrong; the message names the setting and the fix."""


STATE_PREFIX = "<state>/"  # control paths under the state directory: $DEEPFLEET_HOME, else .deepfleet/
CACHE = "<cache>"  # ... under the cache directory: $DEEPFLEET_CACHE, else <state>/cache


def control_path(value: str | None, setting: str) -> Path:
    """A control-side path setting: `<state>/...` and `<cache>/...` under the `deepfleet` command's own
    directories (deepfleet.paths), other relative paths taken from the project root."""
    if not value:
        raise RoleError(f"setting '{setting}' is not set; set it in your inventory's host or group data")
    value = str(value)
    if value.startswith(STATE_PREFIX):
        return state_dir() / value[len(STATE_PREFIX):]
    if value == CACHE or value.startswith(CACHE + "/"):
        return cache_dir() / value[len(CACHE):].lstrip("/")
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def template(name: str) -> str:
    """Path of a template under templates/."""
    return str(TEMPLATES / name)


def venv_dir() -> str:
    return f"{host.data.deepfleet_home}/venv"


def tls_dir() -> str:
    return f"{host.data.deepfleet_config_dir}/tls"
