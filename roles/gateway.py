"""The gateway role: certificates from the internal CA, API key hashes and limits, audit directory,
the TLS 1.3 gateway service in front of this host's runtime (or the replicas in gateway_upstreams)."""

from __future__ import annotations

import io
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from deepfleet.apikeys import active_records, host_key_file, load_keyring
from deepfleet.pki import ca_paths, ensure_audit_signing_key, ensure_client_cert, ensure_server_cert

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


def upstreams(settings: Mapping, host_name: str, local_release: str = "") -> list[dict]:
    """The replicas the gateway routes to: gateway_upstreams, else this host's runtime on loopback."""
    configured = settings["gateway_upstreams"]
    if not configured:
        return [{"name": host_name, "url": f"http://127.0.0.1:{settings['runtime_port']}", "release": local_release}]
    for entry in configured:
        if not isinstance(entry, Mapping) or not str(entry.get("url", "")).startswith(("http://", "https://")):
            raise RoleError(f"gateway_upstreams: {entry!r} is not a replica; write "
                            '{"name": "gpu2", "url": "https://10.0.0.12:8000"}')
    return [{"name": e.get("name") or e["url"].split("://", 1)[1], "url": e["url"], "release": e.get("release", "")}
            for e in configured]


def gateway_yaml_context(settings: Mapping, host_name: str, local_release: str = "") -> dict:
    """Variables for templates/gateway.yaml.j2 from role settings."""
    tls = f"{settings['deepfleet_config_dir']}/tls"
    replicas = upstreams(settings, host_name, local_release)
    mutual_tls = any(r["url"].startswith("https://") for r in replicas)
    return {
        "listen_address": settings["gateway_listen_address"],
        "port": settings["gateway_port"],
        "tls_cert": f"{tls}/server.crt",
        "tls_key": f"{tls}/server.key",
        "api_keys_file": f"{settings['deepfleet_config_dir']}/api_keys.json",
        "upstreams": replicas,
        "upstream_tls": {"ca": f"{tls}/ca.crt", "cert": f"{tls}/client.crt", "key": f"{tls}/client.key"}
        if mutual_tls else None,
        "max_body_bytes": settings["gateway_max_body_bytes"],
        "max_tokens": settings["runtime_max_tokens"],
        "default_max_tokens": settings["runtime_default_max_tokens"],
        "max_in_flight": settings["gateway_max_in_flight"],
        "max_queued": settings["gateway_max_queued"],
        "queue_timeout_s": settings["gateway_queue_timeout_s"],
        "default_rpm": settings["gateway_default_rpm"],
        "default_tpm": settings["gateway_default_tpm"],
        "default_concurrency": settings["gateway_default_concurrency"],
        "audit_dir": audit_dir(settings),
        "audit_content": settings["gateway_audit_content"],
        "audit_rotate_bytes": int(settings["gateway_audit_rotate_mb"] * (1 << 20)),
        "audit_retention_days": settings["gateway_audit_retention_days"],
        "audit_checkpoint_key": f"{tls}/audit-signing.key" if settings["gateway_audit_signing"] else None,
        "audit_checkpoint_every": settings["gateway_audit_checkpoint_every"],
        "metrics_port": settings["gateway_metrics_port"],
        "admin_socket": settings["gateway_admin_socket"],
    }


def audit_dir(settings: Mapping) -> str:
    return settings["gateway_audit_dir"] or f"{settings['deepfleet_state_dir']}/audit"


@deploy("deepfleet gateway", data_defaults=DEFAULTS)
def gateway():
    """Certificates, key hashes and config for the gateway; (re)start it when they change."""
    data = host.data
    settings = {key: data.get(key) for key in [*DEFAULTS, "ssh_hostname"]}
    pki_dir = control_path(data.gateway_pki_dir, "gateway_pki_dir")
    keyring = control_path(data.gateway_api_keyring, "gateway_api_keyring")
    records = load_keyring(keyring)
    if not active_records(records):
        raise RoleError(f"the API keyring {keyring} holds no active keys, so no client could use the gateway; "
                        "create one with `deepfleet keys create NAME` (or run `deepfleet demo`)")
    pair, _ = ensure_server_cert(pki_dir, host.name, server_names(settings, host.name))
    group = data.deepfleet_group
    # Replicas report their release and quantisation on /ready; the config needs no model label,
    # so a new model release does not restart the gateway.
    context = gateway_yaml_context(settings, host.name)

    files.put(name="Internal CA certificate", src=str(ca_paths(pki_dir).cert), dest=f"{tls_dir()}/ca.crt",
              user="root", group=group, mode="0644")
    inputs = [
        files.put(name="Gateway server certificate", src=str(pair.cert), dest=f"{tls_dir()}/server.crt",
                  user="root", group=group, mode="0644"),
        secret_file(name="Gateway server key", src=str(pair.key), dest=f"{tls_dir()}/server.key",
                    user="root", group=group, mode="0640"),
    ]
    if context["upstream_tls"]:
        client, _ = ensure_client_cert(pki_dir, host.name)
        inputs += [files.put(name="Gateway client certificate (mTLS to runtimes)", src=str(client.cert),
                             dest=context["upstream_tls"]["cert"], user="root", group=group, mode="0644"),
                   secret_file(name="Gateway client key", src=str(client.key), dest=context["upstream_tls"]["key"],
                               user="root", group=group, mode="0640")]
    if context["audit_checkpoint_key"]:
        signing = ensure_audit_signing_key(pki_dir, host.name)
        inputs.append(secret_file(name="Audit checkpoint signing key", src=str(signing.key),
                                  dest=context["audit_checkpoint_key"], user="root", group=group, mode="0640"))
    files.directory(name="Audit log directory", path=context["audit_dir"], user=data.deepfleet_user,
                    group=group, mode="0750")
    # Key hashes are re-read by the running gateway: no restart when keys change.
    files.put(name="API key hashes", src=io.StringIO(host_key_file(records)),
              dest=context["api_keys_file"], user="root", group=group, mode="0640")

    config_path = f"{data.deepfleet_config_dir}/gateway.yaml"
    inputs.append(files.template(name="Gateway config", src=template("gateway.yaml.j2"), dest=config_path,
                                 user="root", group=group, mode="0640", **context))
    unit = files.template(name="Gateway systemd unit", src=template("systemd/deepfleet-gateway.service.j2"),
                          dest="/etc/systemd/system/deepfleet-gateway.service", user="root", group="root",
                          mode="0644", audit_dir=context["audit_dir"], **unit_context(settings, config_path))
    check_address = data.gateway_listen_address
    if check_address in ("0.0.0.0", "::"):
        check_address = "127.0.0.1"
    ready = (f"{venv_dir()}/bin/deepfleet-runtime wait-ready https://{check_address}:{data.gateway_port}/health "
             f"--cafile {tls_dir()}/ca.crt --timeout 60")
    converge_service("deepfleet-gateway", unit, inputs, ready)
