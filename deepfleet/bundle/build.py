"""`deepfleet bundle build`: everything an inventory's hosts install, in one signed directory.

    DIR/bundle.json, bundle.json.asc   every file's SHA-256 and size, signed (manifest.py)
    DIR/lock.json                      every version (lock.py): build again from it for the same bytes
    DIR/bundle-signing.asc             the signer's public key (sites trust their own copy of it)
    DIR/apt/<os>-<version>-<arch>/     a signed flat apt repository per Debian/Ubuntu target (debs.py)
    DIR/rpm/<os>-<version>-<arch>/     a signed dnf repository per Rocky/RHEL target (rpms.py)
    DIR/wheels/{deps,runtime}-<digest>/  the runtime's wheelhouses (wheels.py)
    DIR/images/*.tar                   `docker save` tarballs, for Docker mode and GPU hosts (images.py)
    DIR/models/<name>@<release>/       the encrypted, signed model release (docs/model-format.md)

The bundle is assembled in a scratch directory beside DIR and renamed into place when complete
and signed, so DIR is whole or absent. Files are copied, never linked, from the caches: editing a
bundle can never reach the caches the next bundle is built from. Before signing, every file is
checked against the hash the lock (or the model's signed manifest) gives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from deepfleet_runtime.modelstore.manifest import Manifest
from deepfleet_runtime.modelstore.release import MANIFEST_FILE as MODEL_MANIFEST

from ..modelkeys import load_model_keys
from ..modelpack import ensure_release
from . import debs, images, rpms, wheels
from .lock import (LOCK_FILE, LockError, check_covers, created_at, expires_at, load_lock, locked_os, lock_text,
                   new_lock, os_entry)
from .manifest import BundleError, write_manifest
from .signing import KEY_VALID_DAYS, PUBLIC_KEY_FILE, ensure_signer
from .spec import BundleSpec


def copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def build_bundle(spec: BundleSpec, out: Path, *, signer_dir: Path, cache: Path, runtime_src: Path,
                 model_keys_dir: Path | None, lock_path: Path | None = None, log=print,
                 signing_key_valid_days: int = KEY_VALID_DAYS) -> dict:
    """Build the bundle for `spec` into `out` (which must not exist); returns its manifest.

    Without `lock_path` everything is resolved now (newest packages and wheels the pins allow) and
    the bundle's lock.json records it; with it, exactly the locked files are taken. The signing key
    (made with `signing_key_valid_days` on first use) must outlive the bundle, or nothing is built.
    """
    out = Path(out).resolve()
    if out.exists():
        raise BundleError(f"{out} exists; give each bundle a new directory (bundles are never changed in place)")
    pinned = load_lock(lock_path) if lock_path else None
    if pinned:
        check_covers(pinned, spec, lock_path)
    lock = new_lock()
    if pinned:
        lock["created"] = pinned["created"]
        lock["valid_days"] = pinned.get("valid_days", lock["valid_days"])
    out.parent.mkdir(parents=True, exist_ok=True)
    signer = ensure_signer(signer_dir, log, signing_key_valid_days, valid_until=expires_at(lock))
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        when = created_at(lock)
        for target in spec.os_targets:
            entry = locked_os(pinned, target, log) if pinned else None
            if target.family == "rhel":
                if entry is None:
                    resolved, image_id = rpms.resolve_rpm_closure(target, log)
                    entry = os_entry(target, resolved, target.resolver_image, image_id, kind="rpms")
                fetched = debs.fetch_debs(entry["rpms"], cache / "bundle-rpms" / target.key, log)
                rpms.write_dnf_repo(scratch / "rpm" / target.key, fetched, signer, when, copy_file)
            else:
                if entry is None:
                    resolved, image_id = debs.resolve_closure(target, log)
                    entry = os_entry(target, resolved, target.resolver_image, image_id)
                fetched = debs.fetch_debs(entry["debs"], cache / "bundle-debs" / target.key, log)
                debs.write_apt_repo(scratch / "apt" / target.key, fetched, signer, when, copy_file, expires_at(lock))
            lock["os"][target.key] = entry
        for target in spec.wheels:
            entry, deps_dir, runtime_wheel = wheels.build_for(
                target, cache, runtime_src, (pinned or {}).get("wheelhouses", {}).get(target.key), log)
            wheels.place(entry, deps_dir, runtime_wheel, scratch, copy_file)
            lock["wheelhouses"][target.key] = entry
        for reference in spec.images:
            lock["images"][reference] = images.save_image(reference, scratch, (pinned or {}).get("images", {}).get(reference))
        for image, tarball in spec.image_tarballs:
            lock["images"][image] = images.copy_tarball(tarball, scratch, (pinned or {}).get("images", {}).get(image),
                                                        copy_file)
        for model in spec.models:
            lock["models"][model.name] = _place_model(model, scratch, cache, model_keys_dir,
                                                      (pinned or {}).get("models", {}).get(model.name), log)
        (scratch / LOCK_FILE).write_text(lock_text(lock))
        copy_file(signer.public_key_path, scratch / PUBLIC_KEY_FILE)
        manifest = write_manifest(scratch, lock["created"], signer, when, log, expires_at(lock))
        check_against_lock(scratch, manifest["files"], lock)
        os.chmod(scratch, 0o755)
        os.rename(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        signer.close()
    return manifest


def _place_model(model, bundle: Path, cache: Path, model_keys_dir: Path | None, pinned: dict | None, log) -> dict:
    if model_keys_dir is None:
        raise BundleError("the inventory serves a model but no model keys were given (model_keys_dir)")
    release_dir = ensure_release(model.source, model.name, load_model_keys(model_keys_dir), cache, log)
    manifest_bytes = (release_dir / MODEL_MANIFEST).read_bytes()
    entry = {"release": Manifest.from_bytes(manifest_bytes, str(release_dir)).release,
             "dir": f"models/{release_dir.name}", "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest()}
    if pinned and pinned != entry:
        raise LockError(f"model {model.name}: the lock pins release {pinned['release']} with manifest "
                        f"{pinned['manifest_sha256'][:16]}..., this build has {entry['release']} with "
                        f"{entry['manifest_sha256'][:16]}... (encrypting again draws new keys). Set model_source to "
                        "the encrypted release directory the lock was built from, or build without --lock")
    for path in sorted(release_dir.rglob("*")):
        if path.is_file():
            copy_file(path, bundle / entry["dir"] / path.relative_to(release_dir))
    return entry


def check_against_lock(root: Path, files: dict[str, dict], lock: dict) -> None:
    """BundleError naming each file whose hash differs from the one the lock or a model manifest gives it
    (a damaged cache), before the bundle is signed."""
    expected = {}
    for key, entry in lock["os"].items():
        expected.update({f"apt/{key}/pool/{deb['file']}": deb["sha256"] for deb in entry.get("debs", [])})
        expected.update({f"rpm/{key}/Packages/{rpm['file']}": rpm["sha256"] for rpm in entry.get("rpms", [])})
    for entry in lock["wheelhouses"].values():
        wheelhouse = wheels.bundle_wheelhouse(Path(), entry)
        expected.update({(wheelhouse.deps_dir / name).as_posix(): digest for name, digest in entry["deps"].items()})
        expected[wheelhouse.runtime_wheel.as_posix()] = entry["runtime"]["sha256"]
    expected.update({entry["file"]: entry["sha256"] for entry in lock["images"].values()})
    for entry in lock["models"].values():
        expected[f"{entry['dir']}/{MODEL_MANIFEST}"] = entry["manifest_sha256"]
        manifest = json.loads((root / entry["dir"] / MODEL_MANIFEST).read_text())
        expected.update({f"{entry['dir']}/encrypted/{f['path']}": f["encrypted_sha256"] for f in manifest["files"]})
    wrong = sorted(path for path, digest in expected.items() if files.get(path, {}).get("sha256") != digest)
    if wrong:
        raise BundleError("these files differ from the hashes the lock gives them (a damaged cache?): "
                          + ", ".join(wrong[:10]) + "; clear them from the cache and build again")

