"""The docker role: Docker CE from Docker's repository (or the OS's docker.io), daemon.json from a
template, dockerd restarted only when its config changed.

Which hosts get Docker (`docker_enabled`): "auto" installs it where something needs it, hosts
with `runtime_mode: docker` and hosts with an NVIDIA GPU (CUDA containers, the toolkit's smoke
test); true/false force it. daemon.json declares the nvidia runtime on NVIDIA hosts, so the
container toolkit role has nothing to add to it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from .common import RoleError, template
from .defaults import DEFAULTS
from .gpu_facts import has_nvidia_gpu
from .hostos import HostOS, host_os
from .packages import PackageRepo, add_repo, install_packages
from .skip import skip_role

DAEMON_JSON = "/etc/docker/daemon.json"
# Docker's repository names the RHEL clones' directory "centos".
_DOCKER_RHEL_DIRS = {"rhel": "rhel", "rocky": "centos", "almalinux": "centos"}


def docker_wanted(settings: Mapping, gpu: bool) -> tuple[bool, str]:
    """Whether this host gets Docker, and why (shown when the role is skipped)."""
    enabled = settings["docker_enabled"]
    if enabled is True:
        return True, "docker_enabled is true"
    if enabled is False:
        return False, "docker_enabled is false (Docker is managed outside deepfleet)"
    if enabled != "auto":
        raise RoleError(f"docker_enabled is {enabled!r}; use 'auto', true or false")
    if settings["runtime_mode"] == "docker":
        return True, "runtime_mode is docker"
    if gpu:
        return True, "the host has an NVIDIA GPU"
    return False, ("not needed: runtime_mode is systemd and there is no NVIDIA GPU "
                   "(docker_enabled: true installs it anyway)")


def docker_repo(os: HostOS, base_url: str, fingerprints: tuple[str, ...] = ()) -> PackageRepo:
    """Docker CE's repository for this OS under `base_url` (the same layout on any mirror), its key
    accepted only with one of `fingerprints`."""
    base = base_url.rstrip("/")
    if os.family == "rhel":
        root = f"{base}/{_DOCKER_RHEL_DIRS[os.id]}"
        return PackageRepo(name="docker", title="Docker CE repository", key_url=f"{root}/gpg",
                           dnf_baseurl=f"{root}/$releasever/$basearch/stable")
    return PackageRepo(name="docker", title="Docker CE repository", key_url=f"{base}/{os.id}/gpg",
                       apt_source=f"{base}/{os.id} {os.codename} stable", key_fingerprints=tuple(fingerprints))


def docker_packages(settings: Mapping, os: HostOS) -> tuple[PackageRepo | None, list[str]]:
    """Docker's repository (None: the OS's own sources) and packages, as `docker_source` says."""
    if settings["docker_source"] == "docker_ce":
        return (docker_repo(os, settings["docker_repo_base_url"], settings["docker_repo_key_fingerprints"]),
                list(settings["docker_ce_packages"]))
    if settings["docker_source"] == "distro" and os.family == "debian":
        return None, ["docker.io"]
    raise RoleError(f"docker_source {settings['docker_source']!r} is not available on {os.label}; "
                    "use 'docker_ce' (or 'distro' on Debian and Ubuntu)")


def daemon_json_context(settings: Mapping, nvidia_runtime: bool) -> dict:
    """Variables for templates/daemon.json.j2 from role settings."""
    return {
        "log_max_size": settings["docker_log_max_size"],
        "log_max_file": settings["docker_log_max_file"],
        "default_shm_size": settings["docker_default_shm_size"],
        "live_restore": bool(settings["docker_live_restore"]),
        "registry_mirrors": settings["docker_registry_mirrors"] or [],
        "data_root": settings["docker_data_root"],
        "nvidia_runtime": nvidia_runtime,
        "nvidia_default_runtime": bool(settings["nvidia_container_toolkit_default_runtime"]),
    }


@deploy("Docker", data_defaults=DEFAULTS)
def docker():
    """Install Docker, render daemon.json, run dockerd; skipped where `docker_enabled` says so."""
    data = host.data
    settings = {key: data.get(key) for key in DEFAULTS}
    gpu = has_nvidia_gpu()
    wanted, reason = docker_wanted(settings, gpu)
    if not wanted:
        skip_role("Docker", reason)
        return
    os = host_os()
    repo, packages = docker_packages(settings, os)
    repo_changes = add_repo(repo, os) if repo else []
    install_packages("Docker", packages, os, repo_changes)
    config = files.template(name="Docker daemon config", src=template("daemon.json.j2"), dest=DAEMON_JSON,
                            user="root", group="root", mode="0644", **daemon_json_context(settings, gpu))
    systemd.service(name="Enable and start docker", service="docker.service", running=True, enabled=True)
    systemd.service(name="Restart docker for its new config", service="docker.service", restarted=True,
                    _if=config.did_change)
