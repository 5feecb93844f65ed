"""The system ssh command line a streamed push uses: the same login as pyinfra's, or none."""

from __future__ import annotations

from types import SimpleNamespace

from pyinfra.connectors.ssh import connector_data_meta

from roles.transfer import openssh_command


def _host(**data):
    defaults = {key: meta.default for key, meta in connector_data_meta.items()}
    return SimpleNamespace(name="gpu1", connector=SimpleNamespace(data={**defaults, **data}))


def test_key_login_maps_every_setting_pyinfra_uses():
    command = openssh_command(_host(ssh_hostname="10.0.0.5", ssh_port=2201, ssh_user="ops", ssh_key="/k/id",
                                    ssh_known_hosts_file="/k/known", ssh_strict_host_key_checking="yes"))
    assert command == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "StrictHostKeyChecking=yes",
                       "-o", "UserKnownHostsFile=/k/known", "-p", "2201", "-l", "ops", "-i", "/k/id",
                       "-o", "IdentitiesOnly=yes", "10.0.0.5"]


def test_defaults_fall_back_to_the_inventory_name_and_accept_new_host_keys():
    assert openssh_command(_host()) == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                                        "-o", "StrictHostKeyChecking=accept-new", "gpu1"]


def test_logins_the_ssh_client_cannot_repeat_use_pyinfras_connection():
    assert openssh_command(_host(ssh_password="secret")) is None
    assert openssh_command(_host(ssh_key="/k/id", ssh_key_password="secret")) is None
    assert openssh_command(_host(ssh_paramiko_connect_kwargs={"sock": object()})) is None
