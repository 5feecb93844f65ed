"""The lock: every version a bundle holds, so that building again from it gives the same bytes.

    {"format": "deepfleet-bundle-lock/1", "created": "2026-11-28T23:56:26Z",
     "os": {"debian-12-amd64": {"packages": [...asked for...], "resolver_image": "debian@sha256:...",
                                "resolver_image_id": "sha256:...",
                                "debs": [{"file", "url", "size", "sha256"}, ...]},
            "rocky-9-amd64": {... the same, with "rpms" (rpms.py) in place of "debs"}},
     "wheelhouses": {"cp311-x86_64-glibc2.36-transformers": {"python", "machine", "glibc", "extras",
                     "deps": {wheel: sha256}, "runtime": {"file", "sha256", "source_digest"}}},
     "images": {"debian:12-slim": {"id": "sha256:...", "file": "images/....tar", "sha256"}},
     "models": {"tiny-deepseek-v3": {"release": "3f2a9c0d1e2b", "dir": "models/...", "manifest_sha256"}}}

`created` is the time of the first build; the Release files' Date and every signature's
creation time are taken from it, so a rebuild from the lock signs to the same bytes.
`resolver_image` is the pin the packages were resolved under and `resolver_image_id` the image that
ran (debs.py, resolver.py); a rebuild takes the locked packages and runs no resolver, so these stay
as the first build recorded them.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from .resolver import ResolverImageError, split_pin
from .spec import BundleSpec, OsTarget

FORMAT = "deepfleet-bundle-lock/1"
LOCK_FILE = "lock.json"
VALID_DAYS = 365  # a bundle (and its apt repositories) is refused this long after it was built


class LockError(ValueError):
    """A lock is unreadable or does not cover what the inventory needs; the message says what to do."""


def new_lock() -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"format": FORMAT, "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "valid_days": VALID_DAYS, "os": {},
            "wheelhouses": {}, "images": {}, "models": {}}


def created_at(lock: dict) -> datetime.datetime:
    return datetime.datetime.strptime(lock["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def expires_at(lock: dict) -> datetime.datetime:
    """When the bundle built from `lock` stops being accepted (its signed manifest's `expires` and
    its apt repositories' Valid-Until): `valid_days` after it was created."""
    return created_at(lock) + datetime.timedelta(days=lock.get("valid_days", VALID_DAYS))


def load_lock(path: Path) -> dict:
    try:
        lock = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LockError(f"cannot read the lock {path}: {exc}") from None
    if lock.get("format") != FORMAT:
        raise LockError(f"{path} is not a deepfleet bundle lock (format {lock.get('format')!r}, expected {FORMAT})")
    return lock


def lock_text(lock: dict) -> str:
    return json.dumps(lock, indent=1, sort_keys=True) + "\n"


def os_entry(target: OsTarget, debs: list[dict], resolver_image: str, resolver_image_id: str | None,
             kind: str = "debs") -> dict:
    """The lock's record of one target OS: what was asked, the pinned image that resolved it, the image ID
    that ran, and the packages (`kind`: "debs", or "rpms" for RHEL-family targets)."""
    return {"packages": sorted(target.packages), "resolver_image": resolver_image,
            "resolver_image_id": resolver_image_id, kind: debs}


def locked_os(lock: dict, target: OsTarget, log) -> dict | None:
    """The lock's entry for `target` (None when it has none), saying when it was resolved in another image
    than the inventory now names, or in one that was not pinned."""
    entry = lock.get("os", {}).get(target.key)
    if entry is None:
        return None
    image, image_id = entry.get("resolver_image"), entry.get("resolver_image_id")
    if not image_id or not _pinned(image):
        log(f"{target.key}: the lock's packages were resolved in {image}, an image not pinned by digest (a lock "
            "from before resolver images were pinned); their hashes still come from the signed indexes, but build "
            "without --lock to resolve them again in the pinned image")
    elif image != target.resolver_image:
        log(f"{target.key}: packages from the lock, resolved in {image} (image ID {image_id}); the inventory's "
            f"resolver image {target.resolver_image} is not used for a rebuild from the lock")
    return entry


def _pinned(image: str | None) -> bool:
    try:
        return split_pin(image or "")[1] is not None
    except ResolverImageError:
        return False


def check_covers(lock: dict, spec: BundleSpec, lock_path: Path) -> None:
    """LockError listing what the inventory needs and the lock does not pin."""
    gaps = []
    for target in spec.os_targets:
        pinned = lock["os"].get(target.key)
        if pinned is None:
            gaps.append(f"packages for {target.key}")
        elif sorted(pinned["packages"]) != sorted(target.packages):
            extra = sorted(set(target.packages) - set(pinned["packages"]))
            gone = sorted(set(pinned["packages"]) - set(target.packages))
            gaps.append(f"{target.key} packages (now needed: {', '.join(extra) or '-'}; "
                        f"no longer needed: {', '.join(gone) or '-'})")
    gaps += [f"wheels {wheel.key}" for wheel in spec.wheels if wheel.key not in lock["wheelhouses"]]
    gaps += [f"image {image}" for image in spec.images if image not in lock["images"]]
    gaps += [f"image {image} ({tarball.name})" for image, tarball in spec.image_tarballs if image not in lock["images"]]
    gaps += [f"model {model.name}" for model in spec.models if model.name not in lock["models"]]
    if gaps:
        raise LockError(f"the lock {lock_path} does not cover this inventory: {'; '.join(gaps)}. Build without "
                        "--lock to resolve again (a new lock), or use the inventory the lock was made for")
