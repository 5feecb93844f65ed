"""The base role: OS packages the runtime needs, the service account, deepfleet's directories."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from .defaults import DEFAULTS
from .hostos import host_os
from .packages import install_packages
from .selinux import selinux_labels


@deploy("deepfleet base", data_defaults=DEFAULTS)
def base():
    """Install the runtime's Python and base packages (apt or dnf, only when missing), create the
    service user and directories; under SELinux, label the venvs' executables (roles/selinux.py)."""
    data = host.data
    os = host_os()
    install_packages("Base", [*os.python.packages, *data.base_packages], os)

    server.group(name="Service group", group=data.deepfleet_group, system=True)
    server.user(
        name="Service user",
        user=data.deepfleet_user,
        group=data.deepfleet_group,
        system=True,
        home=data.deepfleet_state_dir,
        shell="/usr/sbin/nologin",
        create_home=False,
    )
    # root owns code, config and models; the service user can read them and write only its state.
    directories = [
        (data.deepfleet_home, "root", "0755"),
        (data.deepfleet_models_dir or f"{data.deepfleet_home}/models", "root", "0755"),
        (f"{data.deepfleet_home}/wheelhouse", "root", "0755"),
        (data.deepfleet_config_dir, "root", "0750"),
        (f"{data.deepfleet_config_dir}/tls", "root", "0750"),
        (data.deepfleet_state_dir, data.deepfleet_user, "0750"),
    ]
    for path, user, mode in directories:
        files.directory(name=f"Directory {path}", path=path, user=user, group=data.deepfleet_group,
                        mode=mode)
    selinux_labels(os)
