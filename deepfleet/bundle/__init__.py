"""Air-gapped installs: one signed bundle holds everything an inventory's hosts install.

Built on a connected machine (build.py: OS packages resolved per target OS, wheelhouses, images,
the encrypted model, a lock of every version, a signed manifest of every file), carried in,
checked by `verify_bundle` against the site's trusted key, then installed by the site deploy
with `bundle_dir` set (roles/bundle.py). Operator's view: docs/air-gapped.md.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .manifest import BundleError, VerifiedBundle, verify_bundle

__all__ = ["BundleError", "VerifiedBundle", "verify_bundle", "verified_once"]

_verified: dict[tuple[Path, Path], VerifiedBundle] = {}
_verifying = threading.Lock()


def verified_once(root: Path, trusted_key: Path, log=None) -> VerifiedBundle:
    """`verify_bundle`, done once per process for each bundle (a deploy asks for every host)."""
    key = (Path(root).resolve(), Path(trusted_key).resolve())
    with _verifying:
        if key not in _verified:
            _verified[key] = verify_bundle(key[0], key[1], log)
        return _verified[key]
