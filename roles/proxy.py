"""The proxy role: the site's outbound proxy for everything deepfleet makes a host fetch.

With `proxy_http`/`proxy_https` set (roles/defaults.py), before any repository is used:
    apt     /etc/apt/apt.conf.d/80deepfleet-proxy   Acquire::http(s)::Proxy, and "DIRECT" for each host
                                                    name in proxy_no_proxy (apt.conf(5), apt-transport-http(1))
    dnf     /etc/dnf/dnf.conf [main] proxy=          (dnf.conf(5): one proxy for every repository)
    dockerd /etc/systemd/system/docker.service.d/http-proxy.conf   Environment=HTTP_PROXY/HTTPS_PROXY/NO_PROXY,
            then daemon-reload and a restart of a running dockerd (Docker's "Configure the daemon to use a
            proxy", systemd unit file); only where the docker role installs Docker
    builds  `docker build --build-arg HTTP_PROXY=...` of the runtime image (Docker's predefined build
            arguments: the Dockerfile's apt-get goes through the proxy, and they stay out of the image's history)
The runtime's own pip runs with --no-index from pushed wheels (roles/runtime.py): it fetches nothing.
Unset, the files deepfleet wrote earlier are removed, so turning the proxy off takes effect too.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File, FindInFile
from pyinfra.operations import files, server

from .defaults import DEFAULTS
from .docker import docker_wanted
from .gpu_facts import has_nvidia_gpu
from .hostos import host_os

APT_PROXY_CONF = "/etc/apt/apt.conf.d/80deepfleet-proxy"
DNF_CONF = "/etc/dnf/dnf.conf"
DOCKER_DROPIN = "/etc/systemd/system/docker.service.d/http-proxy.conf"


def proxy_env(settings: Mapping) -> dict[str, str]:
    """HTTP_PROXY/HTTPS_PROXY/NO_PROXY as the proxy settings give them; {} when no proxy is set."""
    env = {}
    if settings["proxy_http"]:
        env["HTTP_PROXY"] = settings["proxy_http"]
    if settings["proxy_https"]:
        env["HTTPS_PROXY"] = settings["proxy_https"]
    if env and settings["proxy_no_proxy"]:
        env["NO_PROXY"] = ",".join(settings["proxy_no_proxy"])
    return env


def _direct_hosts(no_proxy: list[str]) -> list[str]:
    """The plain host names and IPv4 addresses of no_proxy: apt's per-host "DIRECT" takes nothing else
    (no domain suffixes, no CIDRs, and an IPv6 address's colons would end the option's name)."""
    return [entry for entry in no_proxy if entry and not entry.startswith(".") and "/" not in entry
            and ":" not in entry and "*" not in entry]


def apt_proxy_conf(settings: Mapping) -> str | None:
    """apt.conf.d text for the proxy, or None without one."""
    env = proxy_env(settings)
    if not env:
        return None
    lines = ["// Written by deepfleet (roles/proxy.py): the site's proxy. Edits are overwritten."]
    for scheme, key in (("http", "HTTP_PROXY"), ("https", "HTTPS_PROXY")):
        if key in env:
            lines.append(f'Acquire::{scheme}::Proxy "{env[key]}";')
    for name in _direct_hosts(settings["proxy_no_proxy"]):
        lines += [f'Acquire::http::Proxy::{name} "DIRECT";', f'Acquire::https::Proxy::{name} "DIRECT";']
    return "\n".join(lines) + "\n"


def dnf_proxy(settings: Mapping) -> str | None:
    """dnf's one `proxy=` URL (https's where both are set: dnf uses it for every repository), or None."""
    return settings["proxy_https"] or settings["proxy_http"] or None


def docker_proxy_dropin(settings: Mapping) -> str | None:
    """The systemd drop-in Docker's documentation prescribes for dockerd behind a proxy, or None."""
    env = proxy_env(settings)
    if not env:
        return None
    lines = ["# Written by deepfleet (roles/proxy.py): dockerd's proxy for pulls. Edits are overwritten.",
             "[Service]"]
    lines += [f'Environment="{key}={value}"' for key, value in env.items()]
    return "\n".join(lines) + "\n"


def build_args(settings: Mapping) -> list[str]:
    """`--build-arg` pairs for `docker build` (Docker's predefined proxy arguments, both cases)."""
    args = []
    for key, value in proxy_env(settings).items():
        args += ["--build-arg", f"{key}={value}", "--build-arg", f"{key.lower()}={value}"]
    return args


@deploy("Site proxy", data_defaults=DEFAULTS)
def site_proxy():
    """apt/dnf and dockerd through the site's proxy; without one, only files deepfleet wrote earlier go."""
    settings = {key: host.data.get(key) for key in DEFAULTS}
    os = host_os()
    if os.family == "debian":
        text = apt_proxy_conf(settings)
        if text:
            files.put(name="apt through the proxy", src=io.StringIO(text), dest=APT_PROXY_CONF, user="root",
                      group="root", mode="0644")
        elif host.get_fact(File, path=APT_PROXY_CONF):
            files.file(name="apt: no proxy", path=APT_PROXY_CONF, present=False)
    else:
        url = dnf_proxy(settings)
        if url:
            files.line(name="dnf through the proxy", path=DNF_CONF, line=r"^proxy=.*$", replace=f"proxy={url}")
        elif host.get_fact(FindInFile, path=DNF_CONF, pattern=r"^proxy=.*$"):
            files.line(name="dnf: no proxy", path=DNF_CONF, line=r"^proxy=.*$", present=False)
    dropin = docker_proxy_dropin(settings)
    if dropin and docker_wanted(settings, has_nvidia_gpu())[0]:
        changed = files.put(name="dockerd through the proxy", src=io.StringIO(dropin), dest=DOCKER_DROPIN,
                            user="root", group="root", mode="0644")
    elif not dropin and host.get_fact(File, path=DOCKER_DROPIN):
        changed = files.file(name="dockerd: no proxy", path=DOCKER_DROPIN, present=False)
    else:
        return
    server.shell(name="dockerd: reload its unit, restart it if it runs",
                 commands=["systemctl daemon-reload", "systemctl try-restart docker.service"], _if=changed.did_change)
