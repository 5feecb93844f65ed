"""Container images in a bundle, as `docker save` tarballs under images/.

Two kinds: images the build machine's Docker holds (the runtime image's base, the NVIDIA toolkit's
test image), saved by reference and pinned by image id; and `docker save` files the inventory
names (`runtime_image_tarball`), copied and pinned by SHA-256. `docker save` of one image id gives
the same bytes every time, so a rebuild from the lock reproduces the tarballs exactly.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ..digests import sha256_file


class ImageError(RuntimeError):
    """An image could not be saved as the lock pins it; the message says what to do."""


def image_file(reference: str) -> str:
    """The tarball's path in the bundle for an image reference ("nvidia/cuda:12.8.1" -> images/nvidia_cuda_12.8.1.tar)."""
    return f"images/{re.sub(r'[^A-Za-z0-9.-]+', '_', reference)}.tar"


def save_image(reference: str, bundle: Path, pinned: dict | None) -> dict:
    """`docker save` `reference` from this machine's Docker into the bundle; returns its lock entry."""
    inspect = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", reference],
                             capture_output=True, text=True)
    if inspect.returncode != 0:
        raise ImageError(f"image {reference} is not in this machine's Docker; `docker pull {reference}` (or build "
                         "it) on the build machine first, the hosts will load it from the bundle")
    image_id = inspect.stdout.strip()
    if pinned and pinned["id"] != image_id:
        raise ImageError(f"image {reference} is {image_id} here but the lock pins {pinned['id']}; bring that image "
                         "back (`docker load`) or build without --lock to take the new one")
    target = bundle / image_file(reference)
    target.parent.mkdir(parents=True, exist_ok=True)
    saved = subprocess.run(["docker", "save", "--output", str(target), reference], capture_output=True, text=True)
    if saved.returncode != 0:
        raise ImageError(f"docker save {reference} failed: {saved.stderr.strip()[-300:]}")
    entry = {"id": image_id, "file": image_file(reference), "sha256": sha256_file(target)}
    if pinned and pinned != entry:
        raise ImageError(f"docker save of {reference} ({image_id}) gave other bytes than the lock's tarball; "
                         "this Docker does not save reproducibly, build without --lock")
    return entry


def copy_tarball(tarball: Path, bundle: Path, pinned: dict | None, link) -> dict:
    """Put an inventory's `docker save` file into the bundle; returns its lock entry."""
    digest = sha256_file(tarball)
    if pinned and pinned["sha256"] != digest:
        raise ImageError(f"{tarball} differs from the tarball the lock pins ({pinned['sha256'][:16]}...); "
                         "use the locked file or build without --lock")
    entry = {"tarball": tarball.name, "id": None, "file": f"images/{tarball.name}", "sha256": digest}
    (bundle / "images").mkdir(parents=True, exist_ok=True)
    link(tarball, bundle / entry["file"])
    return entry
