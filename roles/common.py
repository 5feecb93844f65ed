"""Helpers the roles share: settings, control-side paths, host paths."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host

from deepfleet.paths import PROJECT_ROOT

TEMPLATES = PROJECT_ROOT / "templates"


class RoleError(RuntimeError):
    """A setting is missing or wrong; the message names the setting and the fix."""


def control_path(value: str | None, setting: str) -> Path:
    """A control-side path setting, relative paths taken from the project root."""
    if not value:
        raise RoleError(f"setting '{setting}' is not set; set it in your inventory's host or group data")
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def template(name: str) -> str:
    """Path of a template under templates/."""
    return str(TEMPLATES / name)


def venv_dir() -> str:
    return f"{host.data.deepfleet_home}/venv"


def tls_dir() -> str:
    return f"{host.data.deepfleet_config_dir}/tls"
