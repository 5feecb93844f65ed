"""The nvidia_container_toolkit role: NVIDIA's container toolkit, so `docker run --gpus` works.

Repository (signed-by keyring) under `nvidia_container_toolkit_repo_base_url`, the pinned
packages, then the docker runtime: where deepfleet renders daemon.json (roles/docker.py) it
already declares the nvidia runtime; where Docker is managed outside deepfleet
(`docker_enabled: false`), `nvidia-ctk runtime configure` adds it and docker restarts only if
that changed the file. A CUDA container listing the GPUs (`nvidia-smi -L`) checks the result
whenever the toolkit changed.
"""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

from .defaults import DEFAULTS
from .docker import DAEMON_JSON, docker_wanted
from .facts import JsonFile
from .gpu_facts import has_nvidia_gpu
from .hostos import HostOS, host_os
from .packages import PackageRepo, add_repo, install_packages, pinned
from .skip import skip_role

DEV_CHAR_RULE_PATH = "/lib/udev/rules.d/71-nvidia-dev-char.rules"  # where NVIDIA's notice puts it
DEV_CHAR_RULE = ("# Written by deepfleet (roles/nvidia_container_toolkit.py): /dev/char links to all NVIDIA device nodes\n"
                 'ACTION=="add", DEVPATH=="/bus/pci/drivers/nvidia", '
                 'RUN+="/usr/bin/nvidia-ctk system create-dev-char-symlinks --create-all"\n')
# Installed together at one version, as NVIDIA's install guide pins them.
TOOLKIT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                    "libnvidia-container1")


def toolkit_repo(os: HostOS, base_url: str, fingerprints: tuple[str, ...] = ()) -> PackageRepo:
    """NVIDIA's libnvidia-container repository under `base_url`, its key accepted only with one of
    `fingerprints` (when given)."""
    base = base_url.rstrip("/")
    return PackageRepo(name="nvidia-container-toolkit", title="NVIDIA container toolkit repository",
                       key_url=f"{base}/gpgkey", apt_source=f"{base}/stable/deb/{os.deb_arch} /",
                       dnf_baseurl=f"{base}/stable/rpm/$basearch",
                       dnf_options={"gpgcheck": "0", "repo_gpgcheck": "1"}, key_fingerprints=tuple(fingerprints))


def toolkit_packages(version: str | None, os: HostOS) -> list[str]:
    """The toolkit's packages, pinned to `version` (NVIDIA's package release is always -1)."""
    return [pinned(name, f"{version}-1", os) if version else name for name in TOOLKIT_PACKAGES]


@operation()
def register_docker_runtime(daemon_json: str, default_runtime: bool):
    """
    `nvidia-ctk runtime configure --runtime=docker` unless `daemon_json` already declares it.

    + daemon_json: Docker's daemon config file
    + default_runtime: also make nvidia the default runtime
    """
    config = host.get_fact(JsonFile, path=daemon_json) or {}
    declared = "nvidia" in (config.get("runtimes") or {})
    is_default = config.get("default-runtime") == "nvidia"
    if declared and is_default and not default_runtime:
        # nvidia-ctk adds a default runtime but never removes one: running it would change nothing.
        host.noop(f"{daemon_json} declares the nvidia runtime; its default-runtime nvidia was set outside "
                  "deepfleet and is left as is (remove it from daemon.json by hand if containers should not get it)")
        return
    if declared and is_default == bool(default_runtime):
        host.noop(f"{daemon_json} declares the nvidia runtime")
        return
    yield StringCommand("nvidia-ctk", "runtime", "configure", "--runtime=docker", f"--config={daemon_json}",
                        *(["--set-as-default"] if default_runtime else []))


@deploy("NVIDIA container toolkit", data_defaults=DEFAULTS)
def nvidia_container_toolkit():
    """Install the toolkit, register the nvidia runtime with Docker, smoke-test a CUDA container."""
    data = host.data
    if not has_nvidia_gpu():
        skip_role("NVIDIA container toolkit", "no NVIDIA device on the PCI bus")
        return
    os = host_os()
    repo_changes = add_repo(toolkit_repo(os, data.nvidia_container_toolkit_repo_base_url,
                                         data.nvidia_container_toolkit_repo_key_fingerprints), os)
    install = install_packages("NVIDIA container toolkit", toolkit_packages(data.nvidia_container_toolkit_version, os),
                               os, repo_changes)
    changes = [install]
    settings = {key: data.get(key) for key in DEFAULTS}
    if not docker_wanted(settings, gpu=True)[0]:
        registered = register_docker_runtime(name="Register the nvidia runtime with Docker (nvidia-ctk)",
                                             daemon_json=DAEMON_JSON,
                                             default_runtime=data.nvidia_container_toolkit_default_runtime)
        server.shell(name="Restart docker for the nvidia runtime", commands=["systemctl restart docker"],
                     _if=registered.did_change)
        changes.append(registered)
    # With systemd cgroups a `systemctl daemon-reload` (unit changes of any role) detaches GPUs from running
    # containers unless /dev/char links to NVIDIA's devices exist (NVIDIA/nvidia-container-toolkit#48): the
    # toolkit's documented remedy is this udev rule and one run of the same command now.
    rule = files.put(name="udev rule: /dev/char links for NVIDIA devices (GPUs survive a daemon-reload)",
                     src=io.StringIO(DEV_CHAR_RULE), dest=DEV_CHAR_RULE_PATH, user="root", group="root", mode="0644")
    server.shell(name="Create the /dev/char links for NVIDIA devices now",
                 commands=["nvidia-ctk system create-dev-char-symlinks --create-all"], _if=any_changed(rule, install))
    server.shell(name="Smoke test: a CUDA container lists the GPUs",
                 commands=[f"docker run --rm --gpus all {data.nvidia_container_toolkit_test_image} nvidia-smi -L"],
                 _if=any_changed(*changes))
