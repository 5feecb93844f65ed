"""The gateway role: host certificate from the internal CA, API key hashes, TLS 1.3 gateway service."""

from __future__ import annotations

import io
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from deepfleet.apikeys import host_key_file, load_keyring
from deepfleet.pki import ca_paths, ensure_server_cert

from .common import RoleError, control_path, template, tls_dir, venv_dir
from .defaults import DEFAULTS
from .runtime import unit_context
from .service import converge_service
from .transfer import secret_file

_LOOPBACK_NAMES = ["localhost", "127.0.0.1"]  # so the deploy's own readiness check verifies the cert


def server_names(settings: Mapping, host_name: str) -> list[str]:
    """The names the host's certificate covers: its inventory name, SSH address, extra names."""
    names = [host_name, *settings["gateway_server_names"], *_LOOPBACK_NAMES]
    if settings.get("ssh_hostname"):
        names.append(settings["ssh_hostname"])
    return sorted(set(names))


def gateway_yaml_context(settings: Mapping) -> dict:
    """Variables for templates/gateway.yaml.j2 from role settings."""
    tls = f"{settings['deepfleet_config_dir']}/tls"
    return {
        "listen_address": settings["gateway_listen_address"],
        "port": settings["gateway_port"],
        "tls_cert": f"{tls}/server.crt",
        "tls_key": f"{tls}/server.key",
        "api_keys_file": f"{settings['deepfleet_config_dir']}/api_keys.json",
        "upstream_url": f"http://127.0.0.1:{settings['runtime_port']}",
    }


@deploy("deepfleet gateway", data_defaults=DEFAULTS)
def gateway():
    """Certificates, key hashes and config for the gateway; (re)start it when they change."""
    data = host.data
    settings = {key: data.get(key) for key in [*DEFAULTS, "ssh_hostname"]}
    pki_dir = control_path(data.gateway_pki_dir, "gateway_pki_dir")
    keyring = control_path(data.gateway_api_keyring, "gateway_api_keyring")
    records = load_keyring(keyring)
    if not records:
        raise RoleError(f"the API keyring {keyring} holds no keys, so no client could use the gateway; "
                        "create one with `deepfleet keys create NAME` (or run `deepfleet demo`)")
    pair, _ = ensure_server_cert(pki_dir, host.name, server_names(settings, host.name))
    group = data.deepfleet_group

    files.put(name="Internal CA certificate", src=str(ca_paths(pki_dir).cert), dest=f"{tls_dir()}/ca.crt",
              user="root", group=group, mode="0644")
    cert = files.put(name="Gateway server certificate", src=str(pair.cert),
                     dest=f"{tls_dir()}/server.crt", user="root", group=group, mode="0644")
    key = secret_file(name="Gateway server key", src=str(pair.key), dest=f"{tls_dir()}/server.key",
                      user="root", group=group, mode="0640")
    # Key hashes are re-read by the running gateway: no restart when keys change.
    files.put(name="API key hashes", src=io.StringIO(host_key_file(records)),
              dest=f"{data.deepfleet_config_dir}/api_keys.json", user="root", group=group, mode="0640")

    config_path = f"{data.deepfleet_config_dir}/gateway.yaml"
    config = files.template(name="Gateway config", src=template("gateway.yaml.j2"), dest=config_path,
                            user="root", group=group, mode="0640", **gateway_yaml_context(settings))
    unit = files.template(name="Gateway systemd unit", src=template("systemd/deepfleet-gateway.service.j2"),
                          dest="/etc/systemd/system/deepfleet-gateway.service", user="root", group="root",
                          mode="0644", **unit_context(settings, config_path))
    check_address = data.gateway_listen_address
    if check_address in ("0.0.0.0", "::"):
        check_address = "127.0.0.1"
    ready = (f"{venv_dir()}/bin/deepfleet-runtime wait-ready https://{check_address}:{data.gateway_port}/health "
             f"--cafile {tls_dir()}/ca.crt --timeout 60")
    converge_service("deepfleet-gateway", unit, [cert, key, config], ready)
