"""The limits store of a fleet: Valkey or Redis from the OS's own packages on one gateway host
(gateway_limits_store_host, else the first gateway), where every gateway keeps the per-key token
buckets, concurrency leases and budget counters (runtime gateway/sharedlimits.py, usagestore.py),
so that N gateways together admit what one would. An inventory with one gateway keeps the
gateway's own buckets (gateway_limits_store: auto); the gateway role runs this role where it applies.

Secured: TLS 1.3 only (the host's certificate from the internal CA, no plaintext port), bound to
the store host's address, plus a password generated once on the control machine
(<pki>/limits-store/, pushed with secret_file: never shown, never diffed). Persistence on (the
append-only file, fsynced every second), no eviction at maxmemory (writes are refused, gateways
fall back on their share). The package's own service is masked before the package is installed,
so it never starts a store with the package's default config; deepfleet-limits-store.service runs
it instead (Type=notify: a restart returns once it serves).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.host import Host
from pyinfra.operations import apt, dnf, files

from deepfleet.pki import ca_paths, ensure_limits_store_password, ensure_server_cert

from .common import RoleError, control_path, template
from .defaults import DEFAULTS
from .hostos import HostOS, host_os
from .service import converge_service
from .tls import server_names
from .topology import gateway_hosts, is_fleet, runtime_address, setting
from .transfer import secret_file

CONFIG_DIR = "/etc/deepfleet-limits-store"  # root:<store user> 0750: config, password, TLS files
UNIT = "deepfleet-limits-store"


@dataclass(frozen=True)
class StorePackage:
    """The OS's package of the store and what it installs."""

    package: str
    server: str  # the server binary
    user: str  # the system user the package creates
    distro_unit: str  # the package's own service, masked


REDIS_DEBIAN = StorePackage("redis-server", "/usr/bin/redis-server", "redis", "redis-server.service")
# Debian 13 ships Valkey (the BSD-licensed fork of Redis 7.2) as its maintained server
VALKEY_DEBIAN = StorePackage("valkey-server", "/usr/bin/valkey-server", "valkey", "valkey-server.service")
REDIS_RHEL = StorePackage("redis", "/usr/bin/redis-server", "redis", "redis.service")  # AppStream


def store_package(os: HostOS) -> StorePackage:
    """The store from the OS's own repositories: Debian 12, Ubuntu: redis-server; Debian 13:
    valkey-server; RHEL/Rocky 9: redis (AppStream)."""
    if os.family == "rhel":
        return REDIS_RHEL
    if os.id == "debian" and int(os.major) >= 13:
        return VALKEY_DEBIAN
    return REDIS_DEBIAN


def store_host(inventory) -> Host | None:
    """The gateway that runs the fleet's store, or None when the gateways keep their own buckets."""
    gateways = gateway_hosts(inventory)
    if not gateways:
        return None
    modes = {setting(gateway, "gateway_limits_store") for gateway in gateways}
    if len(modes) > 1:
        raise RoleError(f"gateway_limits_store differs between the gateways ({', '.join(sorted(modes))}); set it "
                        "once for the whole fleet (group data of `gateways`)")
    mode = modes.pop()
    # auto shares only in a fleet (topology groups): hosts that stand alone are separate endpoints
    if mode == "embedded" or (mode == "auto" and (len(gateways) < 2 or not is_fleet(inventory))):
        return None
    wanted = setting(gateways[0], "gateway_limits_store_host")
    if wanted is None:
        return gateways[0]
    for gateway in gateways:
        if gateway.name == wanted:
            return gateway
    raise RoleError(f"gateway_limits_store_host is {wanted!r}, which is not one of the gateways "
                    f"({', '.join(g.name for g in gateways)})")


def runs_store(node: Host) -> bool:
    store = store_host(node.inventory)
    return store is not None and store.name == node.name


def store_url(store: Host) -> str:
    """Where the gateways reach the store: TLS on the store host's runtime_address (else its SSH address)."""
    address = runtime_address(store)
    return f"rediss://{f'[{address}]' if ':' in address else address}:{setting(store, 'gateway_limits_store_port')}/0"


def gateway_store_section(gateway: Host, password_file: str, ca: str) -> dict | None:
    """gateway.yaml's limits_store section for `gateway`, or None without a shared store."""
    store = store_host(gateway.inventory)
    if store is None:
        return None
    return {"url": store_url(store), "password_file": password_file, "ca": ca,
            "gateways": len(gateway_hosts(gateway.inventory)),
            "timeout_s": setting(gateway, "gateway_limits_store_timeout_s")}


def store_config(settings: Mapping, address: str) -> dict:
    """Variables of templates/limits-store.conf.j2."""
    return {"address": address, "port": settings["gateway_limits_store_port"], "config_dir": CONFIG_DIR,
            "data_dir": settings["gateway_limits_store_dir"],
            "maxmemory_mb": settings["gateway_limits_store_maxmemory_mb"]}


@deploy("deepfleet limits store", data_defaults=DEFAULTS)
def limits_store():
    """The fleet's store on this gateway, if it is the store host: package, config, TLS, password,
    service (restarted only when one of them changed)."""
    if not runs_store(host):
        return
    data = host.data
    settings = {key: data.get(key) for key in [*DEFAULTS, "ssh_hostname"]}
    package = store_package(host_os())
    logger.info(f"{host.print_prefix}limits store: {package.package} on {store_url(host)} for "
                f"{len(gateway_hosts(host.inventory))} gateways")
    files.link(name=f"Mask the package's own {package.distro_unit} (deepfleet runs the store)",
               path=f"/etc/systemd/system/{package.distro_unit}", target="/dev/null")
    if host_os().family == "rhel":
        installed = dnf.packages(name="Limits store package", packages=[package.package])
    else:
        installed = apt.packages(name="Limits store package", packages=[package.package], update=True,
                                 cache_time=3600, extra_install_args="--no-install-recommends")
    files.directory(name="Limits store directory (config, TLS, password)", path=CONFIG_DIR, user="root", group=package.user,
                    mode="0750")
    files.directory(name="Limits store data directory", path=settings["gateway_limits_store_dir"],
                    user=package.user, group=package.user, mode="0750")
    pki_dir = control_path(settings["gateway_pki_dir"], "gateway_pki_dir")
    pair, _ = ensure_server_cert(pki_dir, host.name, server_names(settings, host.name, True))
    _, requirepass = ensure_limits_store_password(pki_dir)
    inputs = [
        installed,
        files.put(name="Limits store: internal CA certificate", src=str(ca_paths(pki_dir).cert),
                  dest=f"{CONFIG_DIR}/ca.crt", user="root", group=package.user, mode="0644"),
        files.put(name="Limits store TLS certificate", src=str(pair.cert), dest=f"{CONFIG_DIR}/server.crt",
                  user="root", group=package.user, mode="0644"),
        secret_file(name="Limits store TLS key", src=str(pair.key), dest=f"{CONFIG_DIR}/server.key",
                    user="root", group=package.user, mode="0640"),
        secret_file(name="Limits store password", src=str(requirepass), dest=f"{CONFIG_DIR}/password.conf",
                    user="root", group=package.user, mode="0640"),
        files.template(name="Limits store config file", src=template("limits-store.conf.j2"),
                       dest=f"{CONFIG_DIR}/store.conf", user="root", group=package.user, mode="0640",
                       **store_config(settings, runtime_address(host))),
    ]
    unit = files.template(name="Limits store systemd unit", src=template(f"systemd/{UNIT}.service.j2"),
                          dest=f"/etc/systemd/system/{UNIT}.service", user="root", group="root", mode="0644",
                          server=package.server, user_name=package.user, config=f"{CONFIG_DIR}/store.conf",
                          data_dir=settings["gateway_limits_store_dir"])
    converge_service(UNIT, unit, inputs, f"systemctl is-active --quiet {UNIT}")
