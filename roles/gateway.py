"""The gateway role: certificates from the internal CA, API key hashes and limits, audit directory,
the TLS 1.3 gateway service in front of the fleet's runtime replicas (roles/topology.py: every
gpu node's runtime, over mutual TLS when it is on another host; or gateway_upstreams). With more
than one gateway, their limits and budgets live in a shared store (roles/limits_store.py, run
from here on the gateway that hosts it) whose password every gateway gets."""

from __future__ import annotations

import io
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from deepfleet.apikeys import active_records, host_key_file, load_keyring
from deepfleet.pki import ensure_audit_signing_key, ensure_limits_store_password

from .common import RoleError, control_path, template, venv_dir
from .limits_store import gateway_store_section, limits_store
from .defaults import DEFAULTS
from .runtime import unit_context
from .service import converge_service
from .skip import skip_role
from .tls import host_certificates, tls_paths
from .topology import fleet_upstreams, runs_gateway
from .transfer import secret_file


def upstreams(settings: Mapping, host_name: str) -> list[dict]:
    """The replicas the gateway routes to: gateway_upstreams, else this host's runtime on loopback."""
    configured = settings["gateway_upstreams"]
    if not configured:
        return [{"name": host_name, "url": f"http://127.0.0.1:{settings['runtime_port']}", "release": ""}]
    for entry in configured:
        if not isinstance(entry, Mapping) or not str(entry.get("url", "")).startswith(("http://", "https://")):
            raise RoleError(f"gateway_upstreams: {entry!r} is not a replica; write "
                            '{"name": "gpu2", "url": "https://10.0.0.12:8000"}')
    return [{"name": e.get("name") or e["url"].split("://", 1)[1], "url": e["url"], "release": e.get("release", "")}
            for e in configured]


# gateway.yaml `connections:` keys and the role settings behind them
CONNECTION_SETTINGS = {"max_connections": "max_connections", "max_per_client": "max_connections_per_client",
                       "handshake_timeout_s": "handshake_timeout_s", "header_timeout_s": "header_timeout_s",
                       "idle_timeout_s": "idle_timeout_s", "max_header_bytes": "max_header_bytes",
                       "max_unauthenticated_per_minute": "max_unauthenticated_per_minute"}


def gateway_yaml_context(settings: Mapping, host_name: str, limits_store: dict | None = None) -> dict:
    """Variables for templates/gateway.yaml.j2 from role settings (`limits_store`: the shared
    store's section, limits_store.gateway_store_section)."""
    tls = f"{settings['deepfleet_config_dir']}/tls"
    replicas = upstreams(settings, host_name)
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
        "connections": {name: settings[f"gateway_{setting}"] for name, setting in CONNECTION_SETTINGS.items()},
        "metrics_port": settings["gateway_metrics_port"],
        "admin_socket": settings["gateway_admin_socket"],
        "routing": settings.get("gateway_routing") or {},
        "limits_store": limits_store,
        "state_dir": settings["gateway_state_dir"],
    }


def audit_dir(settings: Mapping) -> str:
    return settings["gateway_audit_dir"] or f"{settings['gateway_state_dir']}/audit"


@deploy("deepfleet gateway", data_defaults=DEFAULTS)
def gateway():
    """Certificates, key hashes and config for the gateway; (re)start it when they change."""
    if not runs_gateway(host):
        skip_role("Gateway", "not in the inventory's gateways group")
        return
    data = host.data
    settings = {key: data.get(key) for key in [*DEFAULTS, "ssh_hostname"]}
    settings["gateway_upstreams"] = fleet_upstreams(host)
    if not settings["gateway_upstreams"]:
        raise RoleError(f"gateway {host.name} has no runtime replica to route to: put hosts in the inventory's "
                        "gpu_nodes group, or set gateway_upstreams")
    keyring = control_path(data.gateway_api_keyring, "gateway_api_keyring")
    records = load_keyring(keyring)
    if not active_records(records):
        raise RoleError(f"the API keyring {keyring} holds no active keys, so no client could use the gateway; "
                        "create one with `deepfleet keys create NAME` (or run `deepfleet demo`)")
    group = data.gateway_group
    _service_account(data)
    # Replicas report their release and quantisation on /ready; the config needs no model label,
    # so a new model release does not restart the gateway.
    limits_store()  # on the gateway that hosts the fleet's store, else nothing
    store_password = f"{data.deepfleet_config_dir}/limits-store.password"
    store = gateway_store_section(host, store_password, tls_paths()["ca.crt"])
    context = gateway_yaml_context(settings, host.name, store)
    inputs = host_certificates(settings, client=bool(context["upstream_tls"]))
    if store:
        password, _ = ensure_limits_store_password(control_path(data.gateway_pki_dir, "gateway_pki_dir"))
        inputs.append(secret_file(name="Limits store password", src=str(password), dest=store_password,
                                  user="root", group=group, mode="0640"))
    if context["audit_checkpoint_key"]:
        pki_dir = control_path(data.gateway_pki_dir, "gateway_pki_dir")
        signing = ensure_audit_signing_key(pki_dir, host.name)
        inputs.append(secret_file(name="Audit checkpoint signing key", src=str(signing.key),
                                  dest=context["audit_checkpoint_key"], user="root", group=group, mode="0640"))
    files.directory(name="Audit log directory", path=context["audit_dir"], user=data.gateway_user,
                    group=group, mode="0750")
    # Key hashes are re-read by the running gateway: no restart when keys change.
    files.put(name="API key hashes", src=io.StringIO(host_key_file(records)),
              dest=context["api_keys_file"], user="root", group=group, mode="0640")

    config_path = f"{data.deepfleet_config_dir}/gateway.yaml"
    inputs.append(files.template(name="Gateway config", src=template("gateway.yaml.j2"), dest=config_path,
                                 user="root", group=group, mode="0640", **context))
    unit = files.template(name="Gateway systemd unit", src=template("systemd/deepfleet-gateway.service.j2"),
                          dest="/etc/systemd/system/deepfleet-gateway.service", user="root", group="root",
                          mode="0644", audit_dir=context["audit_dir"], limit_nofile=data.gateway_limit_nofile,
                          **unit_context(settings, config_path) | {"service_user": data.gateway_user,
                                                                   "service_group": group,
                                                                   "state_dir": data.gateway_state_dir})
    check_address = data.gateway_listen_address
    if check_address in ("0.0.0.0", "::"):
        check_address = "127.0.0.1"
    ready = (f"{venv_dir()}/bin/deepfleet-runtime wait-ready https://{check_address}:{data.gateway_port}/health "
             f"--cafile {tls_paths()['ca.crt']} --timeout 60 --unit deepfleet-gateway")
    converge_service("deepfleet-gateway", unit, inputs, ready)


def _service_account(data) -> None:
    """The gateway's own group, user and state directory: the runtime's account can neither write
    the audit log nor read the API key hashes or the audit signing key; the gateway's is in the
    runtime's group only to read /etc/deepfleet and its TLS files (the model keys are root's, and
    the runtime's private copy is its user's alone)."""
    server.group(name="Gateway service group", group=data.gateway_group, system=True)
    server.user(name="Gateway service user", user=data.gateway_user, group=data.gateway_group,
                groups=[data.deepfleet_group], system=True, home=data.gateway_state_dir,
                shell="/usr/sbin/nologin", create_home=False)
    files.directory(name=f"Directory {data.gateway_state_dir}", path=data.gateway_state_dir,
                    user=data.gateway_user, group=data.gateway_group, mode="0750")
