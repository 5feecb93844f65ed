"""docs/settings.md, generated from the one declaration of every setting (roles/defaults.py).

    python -m roles.settings_doc > docs/settings.md

tests/roles/test_settings_doc.py fails when the file is not what this prints.
"""

from __future__ import annotations

import sys
from typing import Any

from .defaults import SETTINGS
from .setting import S, declare

# The role (module under roles/, or the command) that reads the settings of each prefix; longest first.
READERS = (
    ("nvidia_container_toolkit_", "roles/nvidia_container_toolkit.py"),
    ("nvidia_driver_", "roles/nvidia_driver.py"),
    ("runtime_container_", "roles/runtime_container.py"),
    ("runtime_image_", "roles/runtime_container.py"),
    ("runtime_address", "roles/topology.py"),
    ("runtime_keep_releases", "roles/release.py"),
    ("runtime_", "roles/runtime.py (runtime.yaml)"),
    ("deepfleet_cache_dir", "roles/runtime.py, roles/model.py"),
    ("deepfleet_models_dir", "roles/model.py, roles/disk_room.py"),
    ("deepfleet_", "roles/base.py (and every role)"),
    ("base_", "roles/base.py"),
    ("cuda_", "roles/cuda.py"),
    ("docker_", "roles/docker.py"),
    ("verify_", "deploys/verify.py"),
    ("model_", "roles/model.py"),
    ("gateway_", "roles/gateway.py (gateway.yaml)"),
    ("firewall_", "roles/firewall.py"),
    ("bundle_", "roles/bundle.py, `deepfleet bundle build`"),
    ("ray_", "roles/ray.py"),
    ("rollout_", "`deepfleet rollout`"),
    ("monitoring_", "roles/monitoring.py"),
    ("proxy_", "roles/proxy.py"),
    ("trust_", "roles/trust.py"),
    ("ntp_max_offset_ms", "deploys/verify.py"),
    ("ntp_", "roles/timesync.py"),
    ("logs_", "roles/logs.py"),
    ("siem_", "roles/siem.py"),
)
HEADER = """# Settings

Every setting of every role, generated from their one declaration in `roles/defaults.py`
(`python -m roles.settings_doc > docs/settings.md`; a test fails when this file is stale). An
inventory overrides any of them by name in host or group data. Before a deploy or `deepfleet plan`
changes anything, a key with a role's prefix that is no setting is refused (naming the closest
one), and so is a value of another type or outside the allowed values.

Types: `str`, `int`, `float` (an int is fine), `bool`, `list`, `dict`, `path` (a file or directory;
"control" ones are on the machine that runs the deploy: relative to the project root, `<state>/` is
`$DEEPFLEET_HOME`, else `.deepfleet/` in the project, and `<cache>` is `$DEEPFLEET_CACHE`, else
`<state>/cache`), `any`; `|null` means None is allowed. Where the allowed values differ per engine
they are listed per `runtime_engine`.

| setting | type | allowed | default | example | read by | what it is |
|---|---|---|---|---|---|---|
"""


def reader(name: str) -> str:
    """Who reads setting `name`."""
    return next(module for prefix, module in READERS if name.startswith(prefix))


def _value(value: Any) -> str:
    """A value as an inventory (Python) writes it."""
    return f"`{value!r}`".replace("|", "\\|")


def _allowed(setting: S) -> str:
    if setting.choices is None:
        return ""
    if isinstance(setting.choices, dict):
        return "<br>".join(f"{engine}: {', '.join(map(_value, values))}" for engine, values in setting.choices.items())
    return ", ".join(map(_value, setting.choices))


def render() -> str:
    """The whole of docs/settings.md."""
    rows = []
    for name, setting in declare(SETTINGS).items():
        example = _value(setting.example) if setting.example is not None else ""
        doc = setting.doc.replace("|", "\\|")
        rows.append(f"| `{name}` | {setting.type.replace('|', ' or ')} | {_allowed(setting)} | "
                    f"{_value(setting.default)} | {example} | {reader(name)} | {doc} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
