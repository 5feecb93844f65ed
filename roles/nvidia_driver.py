"""The nvidia_driver role: a pinned driver branch, loaded, persistent; skipped on hosts without a GPU.

Per host: kernel headers for the running kernel; the driver from NVIDIA's CUDA repository (every
OS; open or proprietary kernel modules) or from the OS (Ubuntu's nvidia-headless-<branch>-server,
Debian 12's non-free nvidia-driver); nouveau blacklisted and the initramfs rebuilt when that
changed; the module loaded, and the host rebooted only when the new module cannot be loaded
(an older one is running, or nouveau holds the GPU), then waited for; nvidia-persistenced on.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, deploy, operation
from pyinfra.facts.rpm import RpmPackages
from pyinfra.facts.server import KernelVersion
from pyinfra.operations import files, server, systemd

from .common import RoleError
from .cuda import cuda_repo
from .defaults import DEFAULTS
from .facts import DnfEnabledRepos
from .driver_reboot import (MOK_FIX, SecureBoot, current_action, hold_packages, reboot_allowed, reboot_pending,
                            secure_boot_blocks, serving)
from .gpu_facts import NvidiaModuleState, has_nvidia_gpu, nvidia_devices, nvswitches
from .hostos import HostOS, host_os
from .packages import PackageRepo, add_repo, install_packages
from .skip import skip_role

NOUVEAU_BLACKLIST = "# Written by deepfleet (roles/nvidia_driver.py)\nblacklist nouveau\noptions nouveau modeset=0\n"
REBUILD_INITRAMFS = {"debian": "update-initramfs -u", "rhel": "dracut --force"}
APT_PIN = "/etc/apt/preferences.d/deepfleet-nvidia-driver"
# Ubuntu's unit runs --no-persistence-mode; NVIDIA's ansible role overrides ExecStart with this (files/).
PERSISTENCED_OVERRIDE_PATH = "/etc/systemd/system/nvidia-persistenced.service.d/deepfleet-persistence-mode.conf"
PERSISTENCED_OVERRIDE = ("# Written by deepfleet (roles/nvidia_driver.py): persistence mode on.\n[Service]\nExecStart=\n"
                         "ExecStart=/usr/bin/nvidia-persistenced --user root --persistence-mode --verbose\n")
# Debian ships one driver branch per release in non-free.
DEBIAN_DRIVER_BRANCH = {"12": "535", "13": "550"}


@dataclass(frozen=True)
class DriverPackages:
    """Where this host's driver comes from and what to install."""

    repos: list[PackageRepo]  # repositories to add first ([]: the OS's configured ones)
    packages: list[str]  # kernel headers and driver packages
    dnf_module: str | None = None  # RHEL 9: the nvidia-driver module stream to install
    driver: tuple[str, ...] = ()  # RHEL 10 (no streams): installed after `packages` (EPEL) and the branch lock
    apt_pin: str | None = None  # apt: an /etc/apt/preferences.d file that holds the driver to its branch
    dkms: bool = True  # the module is built on the host (False: the OS's signed prebuilt modules)


def driver_packages(os: HostOS, kernel: str, settings, nvswitch: bool = False,
                    secure_boot: bool = False) -> DriverPackages:
    """The repository and packages of the pinned driver for this OS (the one OS dispatch of this role).
    `nvswitch`: the board has NVSwitches, so Fabric Manager of the same branch comes too.
    `secure_boot`: on Ubuntu's own driver, Canonical's signed prebuilt modules instead of DKMS."""
    branch = str(settings["nvidia_driver_branch"])
    open_modules = settings["nvidia_driver_open_kernel_modules"]
    source = settings["nvidia_driver_source"]
    if source not in ("cuda_repo", "distro"):
        raise RoleError(f"nvidia_driver_source is {source!r}; use 'cuda_repo' or 'distro'")
    if os.family == "rhel":
        if source == "distro":
            raise RoleError(f"{os.label} ships no NVIDIA driver; set nvidia_driver_source to 'cuda_repo'")
        # Headers of the running kernel (NVIDIA's role: kernel-*-{{ansible_kernel}}): kernel-devel-matched
        # would pull the newest kernel and DKMS would build for a kernel that is not running.
        running = re.sub(r"\.(x86_64|aarch64)$", "", kernel)
        headers = [f"kernel-devel={running}", f"kernel-headers={running}"] + (["epel-release"] if os.id != "rhel" else [])
        repos = [cuda_repo(os, settings["cuda_repo_base_url"], settings["cuda_repo_key_fingerprints"])]
        if os.major != "9":  # RHEL 10: no module streams; NVIDIA: versionlock *nvidia*<branch>*, then install
            driver = ["nvidia-open" if open_modules else "cuda-drivers"] + (["nvidia-fabric-manager"] if nvswitch else [])
            return DriverPackages(repos, headers, driver=tuple(driver))
        stream = f"nvidia-driver:{branch}-{'open' if open_modules else 'dkms'}"
        return DriverPackages(repos, headers, stream + ("/fm" if nvswitch else ""))  # the fm profile adds Fabric Manager
    headers = [f"linux-headers-{kernel}"]
    mirror = settings["nvidia_driver_debian_mirror_url"].rstrip("/")
    if source == "cuda_repo":
        kernel_modules = {"ubuntu": f"nvidia-driver-{branch}-open", "debian": "nvidia-kernel-open-dkms"}
        driver = ([kernel_modules[os.id]] if open_modules else []) + [f"cuda-drivers-{branch}"]
        driver += [f"nvidia-fabricmanager-{branch}"] if nvswitch else []
        repos = [cuda_repo(os, settings["cuda_repo_base_url"], settings["cuda_repo_key_fingerprints"])]
        if os.id == "debian":  # NVIDIA's Debian instructions enable contrib (the driver's dependencies live there)
            repos.insert(0, debian_components(os, mirror, ("contrib",)))
        return DriverPackages(repos, headers + driver, apt_pin=apt_branch_pin(branch))
    if os.id == "ubuntu":
        flavour = "-open" if open_modules else ""
        fabric = [f"nvidia-fabricmanager-{branch}"] if nvswitch else []
        if secure_boot:  # signed by Canonical: they load under Secure Boot, no DKMS build, no MOK
            return DriverPackages([], [f"linux-modules-nvidia-{branch}-server{flavour}-{kernel}",
                                       f"nvidia-headless-no-dkms-{branch}-server{flavour}",
                                       f"nvidia-utils-{branch}-server"] + fabric, dkms=False)
        return DriverPackages([], headers + [f"nvidia-headless-{branch}-server{flavour}",
                                             f"nvidia-utils-{branch}-server"] + fabric)
    if nvswitch:
        raise RoleError(f"this board has NVSwitches and needs NVIDIA Fabric Manager, which Debian does not ship: "
                        "set nvidia_driver_source to 'cuda_repo'")
    packaged = DEBIAN_DRIVER_BRANCH[os.major]
    if branch != packaged:
        raise RoleError(f"Debian {os.major}'s non-free driver is branch {packaged}, not {branch}: set "
                        f"nvidia_driver_branch to {packaged}, or nvidia_driver_source to 'cuda_repo'")
    # nvidia-driver is in non-free, the open module and nvidia-persistenced in contrib, GSP firmware in
    # non-free-firmware (Debian's NvidiaGraphicsDrivers instructions enable all three).
    nonfree = debian_components(os, mirror, ("contrib", "non-free", "non-free-firmware"))
    modules = ["nvidia-open-kernel-dkms"] if open_modules else []
    return DriverPackages([nonfree], headers + modules + ["nvidia-driver", "nvidia-smi", "firmware-misc-nonfree"])


def debian_components(os: HostOS, mirror: str, components: tuple[str, ...]) -> PackageRepo:
    """Debian's own archive with `components`: added to the host's entry for `mirror` where it has one."""
    return PackageRepo(name="debian-nvidia", title=f"Debian {' '.join(components)} (NVIDIA driver)",
                       key_url="", apt_source=f"{mirror} {os.codename} {' '.join(components)}",
                       keyring="/usr/share/keyrings/debian-archive-keyring.gpg")


def apt_branch_pin(branch: str) -> str:
    """An apt preferences file that keeps NVIDIA's driver packages on `branch` (NVIDIA's driver
    installation guide, "Version locking", APT): without it the CUDA repository's newest branch wins."""
    return (f"# Written by deepfleet (roles/nvidia_driver.py): the NVIDIA driver stays on branch {branch}.\n"
            "Package: src:*nvidia*:any src:cuda-drivers:any src:cuda-compat:any\n"
            f"Pin: version {branch}.*\n"
            "Pin-Priority: 1000\n")


def module_needs_reboot() -> bool:
    """True when the module that was built can only be loaded by a reboot (checked at run time)."""
    return current_action() == "reboot"


@operation()
def load_nvidia_module():
    """
    Load the installed nvidia module when none is loaded. A different running version cannot be
    replaced in place: that is left to the reboot that follows (see `module_needs_reboot`).
    """
    module = host.get_fact(NvidiaModuleState)
    if module["loaded"] and module["loaded"] == module["installed"]:
        host.noop(f"nvidia module {module['loaded']} is loaded")
        return
    if module["loaded"]:
        host.noop(f"nvidia {module['loaded']} is running, {module['installed']} is installed: needs a reboot")
        return
    yield StringCommand("modprobe", "nvidia", "||", "echo",
                        "'the nvidia module cannot be loaded now; the next step reboots the host'")


@operation()
def enable_crb(os_id: str, machine: str, major: str = "9"):
    """
    Enable CodeReady Builder (CRB), which EPEL's DKMS and NVIDIA's driver depend on (NVIDIA's CUDA
    installation guide, RHEL 9/10, Rocky 9/10), unless it is enabled already.

    + os_id: "rocky"/"almalinux" (dnf config-manager) or "rhel" (subscription-manager)
    + machine: uname -m
    + major: the RHEL major version ("9", "10")
    """
    enabled = host.get_fact(DnfEnabledRepos)
    if any(repo == "crb" or repo.startswith("codeready-builder") for repo in enabled):
        host.noop("CRB is enabled")
        return
    if os_id == "rhel":
        yield StringCommand("subscription-manager", "repos", "--enable",
                            f"codeready-builder-for-rhel-{major}-{machine}-rpms")
        return
    yield StringCommand("dnf", "config-manager", "--set-enabled", "crb")


@operation()
def dnf_module_install(module: str, package: str, version_prefix: str):
    """
    `dnf module install MODULE` unless `package` is installed at a version starting with `version_prefix`.

    + module: e.g. "nvidia-driver:570-open"
    + package: the package that shows the module is installed, e.g. "nvidia-driver"
    + version_prefix: e.g. "570."
    """
    versions = (host.get_fact(RpmPackages) or {}).get(package) or []
    if any(str(version).startswith(version_prefix) for version in versions):
        host.noop(f"{package} {', '.join(sorted(versions))} is installed")
        return
    yield StringCommand("dnf", "-y", "module", "install", module)


def driver_sources(plan: DriverPackages, os: HostOS, branch: str) -> list:
    """The repositories (and the apt branch pin) of `plan`; the operations whose change means "refresh"."""
    changes = [change for repo in plan.repos for change in add_repo(repo, os)]
    if plan.apt_pin:
        changes.append(files.put(name=f"Hold the NVIDIA driver to branch {branch} (apt pin)",
                                 src=io.StringIO(plan.apt_pin), dest=APT_PIN, user="root", group="root", mode="0644"))
    return changes


@deploy("NVIDIA driver", data_defaults=DEFAULTS)
def nvidia_driver():
    """Install and load the pinned driver branch; skipped (with a message) on hosts without an NVIDIA GPU."""
    data = host.data
    if not has_nvidia_gpu():
        skip_role("NVIDIA driver", "no NVIDIA device on the PCI bus (sysfs vendor 0x10de)")
        return
    os = host_os()
    settings = {key: data.get(key) for key in DEFAULTS}
    switches = nvswitches()
    plan = driver_packages(os, host.get_fact(KernelVersion), settings, nvswitch=bool(switches),
                           secure_boot=host.get_fact(SecureBoot)["enabled"])
    repo_changes = driver_sources(plan, os, str(data.nvidia_driver_branch))
    if os.family == "rhel":
        enable_crb(name="Enable CodeReady Builder (CRB) for EPEL's DKMS", os_id=os.id, machine=os.machine,
                   major=os.major)
    hold = "Hold the NVIDIA driver packages (no unattended upgrade moves the module)"
    gpus = ", ".join(sorted({device["model"] for device in nvidia_devices()}))
    install_packages(f"NVIDIA driver {data.nvidia_driver_branch} for {gpus}", plan.packages, os, repo_changes,
                     no_recommends=False)
    if plan.driver:  # NVIDIA's RHEL 10 instructions: the lock picks the branch nvidia-open installs
        hold_packages(name=hold, packages=[], dnf_pattern=f"*nvidia*{data.nvidia_driver_branch}*")
        install_packages(f"NVIDIA driver {data.nvidia_driver_branch} ({', '.join(plan.driver)})", plan.driver, os,
                         no_recommends=False)
    elif plan.dnf_module:
        dnf_module_install(name=f"NVIDIA driver module {plan.dnf_module}", module=plan.dnf_module,
                           package="nvidia-driver", version_prefix=f"{data.nvidia_driver_branch}.")
        hold_packages(name=hold, packages=[], dnf_pattern=f"*nvidia*{data.nvidia_driver_branch}*")
    else:
        hold_packages(name=hold, packages=[name for name in plan.packages
                                           if not name.startswith(("linux-headers-", "kernel-"))])

    blacklist = files.put(name="Blacklist nouveau", src=io.StringIO(NOUVEAU_BLACKLIST),
                          dest="/etc/modprobe.d/deepfleet-blacklist-nouveau.conf", user="root", group="root",
                          mode="0644")
    server.shell(name="Rebuild the initramfs without nouveau", commands=[REBUILD_INITRAMFS[os.family]],
                 _if=blacklist.did_change)
    load_nvidia_module(name="Load the NVIDIA kernel module")
    server.shell(name="Stop: no NVIDIA kernel module for this host's kernel (only if the build produced none)",
                 commands=[StringCommand("echo", QuoteString("the nvidia module was not built for a kernel this host "
                                                             "runs or boots; see dkms status"), ">&2;", "exit", "1")],
                 _if=lambda: current_action() == "fail")
    server.shell(name="Stop: Secure Boot would refuse the unsigned DKMS module (only if its key is not enrolled)",
                 commands=[f"echo '{MOK_FIX}' >&2; exit 1"], _if=lambda: secure_boot_blocks(plan.dkms))
    # A reboot already due is a definite change (a dry run shows it, so `deepfleet rollout` takes the
    # host); one the packages above may bring is decided at run time.
    when_reboot = {} if reboot_pending(host.get_fact(NvidiaModuleState)) else {"_if": module_needs_reboot}
    if data.nvidia_driver_reboot and not reboot_allowed(data.nvidia_driver_allow_reboot_serving):
        server.shell(name="Reboot to load the new NVIDIA kernel module: refused: the host serves traffic "
                          f"({', '.join(serving())})",
                     commands=["echo 'the new NVIDIA module needs a reboot and this host serves traffic: run "
                               "deepfleet rollout (drains it first), or set nvidia_driver_allow_reboot_serving: "
                               "true' >&2; exit 1"], **when_reboot)
    elif data.nvidia_driver_reboot:
        server.reboot(name="Reboot to load the new NVIDIA kernel module (only if it could not be loaded)",
                      delay=30, reboot_timeout=data.nvidia_driver_reboot_timeout_s, **when_reboot)
    else:
        server.shell(name="Stop: the new NVIDIA kernel module needs a reboot (nvidia_driver_reboot is false)",
                     commands=["echo 'the NVIDIA driver is installed but its module needs a reboot; reboot "
                               "the host or set nvidia_driver_reboot: true' >&2; exit 1"],
                     **when_reboot)
    if switches:  # NVIDIA's Fabric Manager guide: enabled and started after the driver loads
        systemd.service(name=f"NVIDIA Fabric Manager for {len(switches)} NVSwitches",
                        service="nvidia-fabricmanager.service", running=True, enabled=True)
    if data.nvidia_driver_persistenced:
        override = files.put(name="nvidia-persistenced: persistence mode on (unit override)",
                             src=io.StringIO(PERSISTENCED_OVERRIDE), dest=PERSISTENCED_OVERRIDE_PATH, user="root",
                             group="root", mode="0644")
        systemd.daemon_reload(name="Reload systemd units for nvidia-persistenced", _if=override.did_change)
        systemd.service(name="nvidia-persistenced", service="nvidia-persistenced.service", running=True,
                        enabled=True)
        systemd.service(name="nvidia-persistenced (restarted for persistence mode)",
                        service="nvidia-persistenced.service", restarted=True, _if=override.did_change)
