"""What a bundle must hold, as the build is asked for it (roles/bundle_contents.py derives it from an
inventory): per target OS the packages and the repositories they come from, the wheelhouses,
the container images and the model releases. Resolved versions are the lock's job (lock.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AptSource:
    """A vendor repository the resolver adds before resolving (the roles' PackageRepo, flattened)."""

    name: str  # file stem: deepfleet-<name>.list, /etc/apt/keyrings/deepfleet-<name>.asc
    title: str
    key_url: str  # "" when `keyring` ships with the OS
    apt_list: str  # the sources.list.d content, signed-by already in it (RHEL targets: the .repo file's)
    key_fingerprints: tuple[str, ...] = ()  # the key is refused without one of these (deepfleet.pgpkeys)


@dataclass(frozen=True)
class OsTarget:
    """One OS and architecture the inventory's hosts run, and the packages its roles install there."""

    os_id: str  # "debian", "ubuntu", "rocky"
    version: str  # "12", "22.04"
    family: str  # "debian" (apt) or "rhel" (dnf)
    machine: str  # "x86_64", "aarch64"
    deb_arch: str  # "amd64", "arm64"
    resolver_image: str  # a container image of this OS, pinned: name@sha256:<registry digest or image ID>
    packages: tuple[str, ...] = ()  # names, or name=version pins
    sources: tuple[AptSource, ...] = ()

    @property
    def key(self) -> str:
        """The target's name in the bundle and the lock: "debian-12-amd64"."""
        return f"{self.os_id}-{self.version}-{self.deb_arch}"


@dataclass(frozen=True)
class WheelTarget:
    """A wheelhouse: the runtime with `extras` for one Python and platform."""

    python: str
    machine: str
    glibc: str
    extras: tuple[str, ...] = ()
    accelerator: str = "cpu"  # the torch build the wheels are pinned to (runtime/constraints-<accelerator>.txt)

    @property
    def key(self) -> str:
        return (f"cp{self.python.replace('.', '')}-{self.machine}-glibc{self.glibc}-{self.accelerator}-"
                f"{'+'.join(self.extras) or 'light'}")


@dataclass(frozen=True)
class ModelSource:
    name: str
    source: Path  # a model directory or an encrypted release on the build machine


@dataclass(frozen=True)
class BundleSpec:
    """Everything an inventory's hosts install, merged over its hosts."""

    os_targets: tuple[OsTarget, ...]
    wheels: tuple[WheelTarget, ...]
    images: tuple[str, ...] = ()  # references saved from the build machine's Docker (`docker save`)
    image_tarballs: tuple[tuple[str, Path], ...] = ()  # (image tag, `docker save` file) named by the inventory
    models: tuple[ModelSource, ...] = ()
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> its OS target key (for messages)
