"""Which OS and architecture a host runs, from facts: the one place roles dispatch on the OS.

Roles never test distro names themselves: they read `host_os()` and choose by its `family`
("debian" for Debian/Ubuntu, "rhel" for Rocky/RHEL/AlmaLinux) and its vendor-layout properties.
The architecture always comes from facts (`uname -m`), never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.facts.server import Arch, LinuxDistribution

from .common import RoleError

# (os id, major version) -> family. Everything else is refused with a clear message.
SUPPORTED = {
    ("ubuntu", "22"): "debian",
    ("ubuntu", "24"): "debian",
    ("debian", "12"): "debian",
    ("rocky", "9"): "rhel",
    ("rhel", "9"): "rhel",
    ("almalinux", "9"): "rhel",
}
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class HostOS:
    """A host's OS as the roles need it."""

    id: str  # os-release ID: "ubuntu", "debian", "rocky", "rhel", "almalinux"
    version: str  # os-release VERSION_ID: "22.04", "12", "9.4"
    codename: str  # "jammy", "bookworm"; "" on RHEL-family hosts
    machine: str  # uname -m: "x86_64", "aarch64"

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    @property
    def family(self) -> str:
        """"debian" (apt) or "rhel" (dnf)."""
        return SUPPORTED[(self.id, self.major)]

    @property
    def deb_arch(self) -> str:
        """Debian's name for the architecture ("amd64", "arm64")."""
        return _DEB_ARCH[self.machine]

    @property
    def nvidia_distro(self) -> str:
        """The directory name NVIDIA's CUDA repository uses: "ubuntu2204", "debian12", "rhel9"."""
        if self.family == "rhel":
            return f"rhel{self.major}"
        return self.id + self.version.replace(".", "")

    @property
    def nvidia_arch(self) -> str:
        """The architecture directory of NVIDIA's CUDA repository ("sbsa" for arm64 servers)."""
        return "sbsa" if self.machine == "aarch64" else self.machine

    @property
    def label(self) -> str:
        return f"{self.id} {self.version} ({self.machine})"


def host_os() -> HostOS:
    """The current host's OS from facts; a clear error for an OS deepfleet does not support."""
    distro = host.get_fact(LinuxDistribution) or {}
    meta = distro.get("release_meta") or {}
    os_id = (meta.get("ID") or "").lower()
    version = meta.get("VERSION_ID") or ""
    machine = host.get_fact(Arch) or ""
    found = HostOS(os_id, version, meta.get("VERSION_CODENAME") or "", machine)
    if (os_id, found.major) not in SUPPORTED:
        supported = ", ".join(f"{name} {major}" for name, major in SUPPORTED)
        raise RoleError(f"host {host.name} runs {os_id or 'an unknown OS'} {version}; deepfleet's roles "
                        f"support {supported}")
    if machine not in _DEB_ARCH:
        raise RoleError(f"host {host.name} has architecture {machine!r}; deepfleet's roles support "
                        f"{', '.join(_DEB_ARCH)}")
    return found
