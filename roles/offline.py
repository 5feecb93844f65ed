"""Whether a host is installed from a bundle, and the inputs the roles take from it then.

With `bundle_dir` set (roles/bundle.py installs the package source and images), the model role
pushes the bundle's encrypted release, the runtime role installs the bundle's wheelhouse and, in
Docker mode, loads the bundle's image tarball: nothing is built or fetched for the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pyinfra import host, logger

from deepfleet.bundle import BundleError, VerifiedBundle, verified_once
from deepfleet.bundle.spec import WheelTarget
from deepfleet.bundle.wheels import bundle_wheelhouse
from deepfleet.wheelhouse import TargetPlatform, Wheelhouse, recorded_hashes

from .common import RoleError, control_path


def offline() -> bool:
    return bool(host.data.get("bundle_dir"))


def the_bundle() -> VerifiedBundle:
    """The verified bundle named by `bundle_dir` (verified once per deploy); RoleError naming every
    file that is wrong, raised while planning, so no host has changed yet."""
    data = host.data
    root = control_path(data.bundle_dir, "bundle_dir")
    trusted = control_path(data.bundle_trusted_key, "bundle_trusted_key")
    try:
        return verified_once(root, trusted, log=logger.info)
    except BundleError as exc:
        raise RoleError(f"the bundle is refused, no host was changed: {exc}") from None


def runtime_tarball(settings: Mapping) -> Path | None:
    """The `docker save` file of the runtime image when Docker mode loads one (runtime_image_source: tarball)."""
    if settings["runtime_mode"] == "docker" and settings["runtime_image_source"] == "tarball":
        return control_path(settings["runtime_image_tarball"], "runtime_image_tarball")
    return None


def runtime_image_file(bundle: VerifiedBundle, tarball_name: str) -> tuple[str, str]:
    """(image, tarball relative to the bundle) of the runtime image tarball named `tarball_name`."""
    for reference, entry in bundle.lock["images"].items():
        if entry.get("tarball") == tarball_name:
            return reference, entry["file"]
    raise RoleError(f"host {host.name}: the bundle holds no runtime image tarball {tarball_name} "
                    "(runtime_image_tarball); build the bundle from the inventory you deploy")


def wheelhouse_from_bundle(target: TargetPlatform, extras: tuple[str, ...]) -> Wheelhouse:
    """The bundle's wheelhouse for this Python, platform and extras (what build_wheelhouse would make)."""
    key = WheelTarget(target.python, target.machine, target.glibc, tuple(extras), target.accelerator).key
    bundle = the_bundle()
    try:
        return bundle_wheelhouse(bundle.root, bundle.wheel_entry(key))
    except BundleError as exc:
        raise RoleError(f"host {host.name}: {exc}") from None


def wheelhouse_hashes(wheelhouse: Wheelhouse) -> tuple[dict[str, str], str]:
    """The SHA-256 of a wheelhouse's dependency wheels ({name: digest}) and of its runtime wheel,
    which the host checks the pushed files against. Online, those recorded where it was built;
    offline, those of the bundle's signed manifest, never the files' own (whoever can write
    bundle_dir may have swapped them since they verified). RoleError for a file not signed."""
    recorded, runtime_sha256 = recorded_hashes(wheelhouse)  # offline: which files, not their hashes
    if not offline():
        return recorded, runtime_sha256
    bundle = the_bundle()
    try:
        return ({name: bundle.signed_sha256(wheelhouse.deps_dir / name) for name in recorded},
                bundle.signed_sha256(wheelhouse.runtime_wheel))
    except BundleError as exc:
        raise RoleError(f"host {host.name}: {exc}") from None


def model_release_from_bundle(name: str) -> Path:
    """The bundle's encrypted release of model `name`."""
    bundle = the_bundle()
    try:
        return bundle.root / bundle.model(name)
    except BundleError as exc:
        raise RoleError(f"host {host.name}: {exc}") from None


def offline_settings(settings: Mapping) -> dict:
    """`settings` with control-side inputs taken from the bundle (Docker mode's image tarball)."""
    tarball = runtime_tarball(settings) if offline() else None
    if not tarball:
        return dict(settings)
    bundle = the_bundle()
    return {**settings, "runtime_image_tarball": str(bundle.root / runtime_image_file(bundle, tarball.name)[1])}
