"""When the NVIDIA driver role may reboot a host, and when it stops instead, saying how to go on.

Decided from facts, never from what was merely installed:

    module_action()      from what the module build produced (NvidiaModuleState): "none" (loaded, or
                         nothing installed yet), "reboot" (built for the running kernel but not
                         loadable now, or built only for the kernel the host boots next), "fail"
                         (a driver is installed and DKMS built no module, or only for a kernel the
                         host will not boot)
    reboot_pending()     a reboot is due before this run changes anything: a definite change in a
                         dry run, so `deepfleet rollout` (which plans from one) drains and reboots it
    SecureBoot           `mokutil`: Secure Boot on, and whether DKMS's signing key is enrolled;
                         unsigned DKMS modules never load there, so the role stops before any reboot
                         with the MOK enrolment spelled out (Ubuntu uses Canonical's signed modules)
    serving()            the gateway or runtime unit runs: a reboot would cut traffic, so it is
                         refused unless the host was drained (`deepfleet rollout` sets
                         DEEPFLEET_DRAINED) or `nvidia_driver_allow_reboot_serving` is set
    HeldPackages         what apt-mark / dnf versionlock already hold (the driver is held so an
                         unattended upgrade cannot move the module under a serving host)
"""

from __future__ import annotations

import os as environment

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.facts.systemd import SystemdStatus

from .gpu_facts import NvidiaModuleState

DKMS_KEY = "/var/lib/dkms/mok.pub"
SERVING_UNITS = ("deepfleet-gateway.service", "deepfleet-runtime.service")
MOK_FIX = (f"Secure Boot is on and the DKMS signing key {DKMS_KEY} is not enrolled, so the NVIDIA module cannot "
           f"load. Enrol it: run `mokutil --import {DKMS_KEY}` (choose a one-time password), reboot at the "
           "console and pick 'Enroll MOK' in MokManager, then run deepfleet again. (Ubuntu: "
           "nvidia_driver_source 'distro' uses Canonical's signed modules instead.)")


class SecureBoot(FactBase):
    """{"enabled": Secure Boot is on, "dkms_key_enrolled": DKMS's MOK is enrolled}; both false without mokutil."""

    def command(self) -> str:
        return (f"mokutil --sb-state 2>/dev/null; [ -f {DKMS_KEY} ] && mokutil --test-key {DKMS_KEY} 2>&1; true")

    @staticmethod
    def default() -> dict:
        return {"enabled": False, "dkms_key_enrolled": False}

    def process(self, output):
        return {"enabled": any(line.strip() == "SecureBoot enabled" for line in output),
                "dkms_key_enrolled": any("is already enrolled" in line for line in output)}


class HeldPackages(FactBase):
    """Package holds: `apt-mark showhold` names, or `dnf versionlock list` entries; [] when none."""

    def command(self) -> str:
        return "(apt-mark showhold || dnf -q versionlock list) 2>/dev/null; true"

    @staticmethod
    def default() -> list:
        return []

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


def module_action(module: dict) -> tuple[str, str]:
    """("none" | "reboot" | "fail", why) for the nvidia module as the host reports it now."""
    loaded, installed, built = module.get("loaded"), module.get("installed"), module.get("built") or {}
    if loaded and loaded == installed:
        return "none", f"nvidia {loaded} is loaded"
    if installed:
        return "reboot", f"nvidia {installed} is built for the running kernel but cannot be loaded now"
    default = module.get("default")
    if built:
        kernels = ", ".join(sorted(built))
        if default and default not in built:
            return "fail", (f"the nvidia module was built for {kernels} only, but the host boots {default}: "
                            f"install kernel-devel/headers for {module.get('running')} and run deepfleet again")
        return "reboot", f"the nvidia module was built for {kernels}, not the running {module.get('running')}"
    if module.get("driver"):
        return "fail", (f"NVIDIA driver {module['driver']} is installed but DKMS built no nvidia module: check "
                        f"`dkms status` and install the headers of the running kernel {module.get('running')}")
    return "none", "no NVIDIA driver is installed yet"


def reboot_pending(module: dict) -> bool:
    """The host already holds a module that only a reboot loads, whatever this run installs: another
    version is loaded, or the module is built only for a kernel that is not running. (Installed and
    none loaded: the role's load step may load it in place, so that is decided at run time.)"""
    return module_action(module)[0] == "reboot" and (bool(module.get("loaded")) or not module.get("installed"))


def current_action() -> str:
    return module_action(host.get_fact(NvidiaModuleState))[0]


def serving() -> list[str]:
    """The deepfleet units serving traffic on this host right now."""
    status = host.get_fact(SystemdStatus, user_mode=False, machine=None, user_name=None) or {}
    return [unit for unit in SERVING_UNITS if status.get(unit)]


def reboot_allowed(settings_allow: bool) -> bool:
    """A reboot may cut this host's traffic: drained by `deepfleet rollout`, explicitly allowed, or not serving."""
    return bool(settings_allow) or environment.environ.get("DEEPFLEET_DRAINED") == "1" or not serving()


def secure_boot_blocks(uses_dkms: bool) -> bool:
    """Secure Boot would refuse the (unsigned DKMS) module that is not loaded: stop before a reboot."""
    boot = host.get_fact(SecureBoot)
    module = host.get_fact(NvidiaModuleState)
    return uses_dkms and boot["enabled"] and not boot["dkms_key_enrolled"] and not module.get("loaded")


@operation()
def hold_packages(packages: list[str], dnf_pattern: str | None = None):
    """
    Hold packages at their installed version: `apt-mark hold`, or `dnf versionlock add PATTERN`.

    + packages: apt package names (ignored with dnf_pattern)
    + dnf_pattern: dnf: the versionlock pattern, e.g. "*nvidia*570*" (NVIDIA's driver installation guide)
    """
    held = host.get_fact(HeldPackages)
    if dnf_pattern:
        if any("nvidia" in entry for entry in held):
            host.noop("the NVIDIA driver is version-locked")
            return
        yield StringCommand("dnf", "install", "-y", "python3-dnf-plugin-versionlock")
        yield StringCommand("dnf", "versionlock", "add", f"'{dnf_pattern}'")
        return
    missing = [package for package in packages if package not in held]
    if not missing:
        host.noop(f"held: {', '.join(packages)}")
        return
    yield StringCommand("apt-mark", "hold", *missing)
