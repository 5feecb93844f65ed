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


@dataclass(frozen=True)
class RuntimePython:
    """The interpreter the runtime's venv is built with on one OS (deepfleet-runtime needs 3.11+)."""

    command: str  # what runs it: "python3", or "python3.11" where the OS's python3 is older
    version: str  # "3.11"
    glibc: str  # the OS's C library version, for wheel tags before the host has a Python to ask
    # The OS packages that bring it with venv + ensurepip. python3 is always among them: the
    # deploy's own helpers on the host (facts, key downloads, model transfers) run `python3`.
    packages: tuple[str, ...]


@dataclass(frozen=True)
class OsRelease:
    family: str  # "debian" (apt) or "rhel" (dnf)
    python: RuntimePython


_DEBIAN_PYTHON = ("python3", "python3-venv")
# RHEL 9's python3 is 3.9; AppStream's python3.11 carries venv and ensurepip itself.
_EL9 = OsRelease("rhel", RuntimePython("python3.11", "3.11", "2.34", ("python3", "python3.11")))
# RHEL 10's python3 is 3.12 (venv and ensurepip included), glibc 2.39. NVIDIA publishes compute/cuda/repos/
# rhel10 (driver without dnf module streams: roles/nvidia_driver.py), Docker <centos|rhel>/10.
_EL10 = OsRelease("rhel", RuntimePython("python3", "3.12", "2.39", ("python3",)))
# (os id, major version) -> what the roles need to know. Everything else is refused with a clear message.
SUPPORTED = {
    # Ubuntu 22.04's python3 is 3.10: the runtime gets 3.11 from Ubuntu's own universe component.
    ("ubuntu", "22"): OsRelease("debian", RuntimePython("python3.11", "3.11", "2.35",
                                                        ("python3", "python3.11", "python3.11-venv"))),
    ("ubuntu", "24"): OsRelease("debian", RuntimePython("python3", "3.12", "2.39", _DEBIAN_PYTHON)),
    # Ubuntu 26.04: python3 3.14, glibc 2.43 (its release notes). NVIDIA's ubuntu2604 repository is refused
    # (roles/cuda.py: cuda_repo); the driver and CUDA come from Ubuntu's archive there.
    ("ubuntu", "26"): OsRelease("debian", RuntimePython("python3", "3.14", "2.43", _DEBIAN_PYTHON)),
    ("debian", "12"): OsRelease("debian", RuntimePython("python3", "3.11", "2.36", _DEBIAN_PYTHON)),
    # Debian 13 (trixie): NVIDIA publishes compute/cuda/repos/debian13, signed with a new key (cuda.py).
    ("debian", "13"): OsRelease("debian", RuntimePython("python3", "3.13", "2.41", _DEBIAN_PYTHON)),
    ("rocky", "9"): _EL9,
    ("rhel", "9"): _EL9,
    ("almalinux", "9"): _EL9,
    ("rocky", "10"): _EL10,
    ("rhel", "10"): _EL10,
    ("almalinux", "10"): _EL10,
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
        return SUPPORTED[(self.id, self.major)].family

    @property
    def python(self) -> RuntimePython:
        """The Python the runtime runs on here (the base role installs it)."""
        return SUPPORTED[(self.id, self.major)].python

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
                        f"support {supported} (docs/gpu-hosts.md)")
    if machine not in _DEB_ARCH:
        raise RoleError(f"host {host.name} has architecture {machine!r}; deepfleet's roles support "
                        f"{', '.join(_DEB_ARCH)}")
    return found


def image_os(base_os: str, machine: str) -> HostOS:
    """The OS of a runtime image's base, named like "ubuntu-24.04" or "debian-12" (the `*_os`
    settings); only Debian-family bases, whose Python templates/Dockerfile.runtime.j2 installs with apt."""
    name, _, version = base_os.partition("-")
    found = HostOS(name.lower(), version, "", machine)
    release = SUPPORTED.get((found.id, found.major))
    if release is None or release.family != "debian":
        known = ", ".join(f"{n}-{major}" for (n, major), release in SUPPORTED.items() if release.family == "debian")
        raise RoleError(f"runtime image base OS {base_os!r} is not one deepfleet builds images on ({known})")
    return found
