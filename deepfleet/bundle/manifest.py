"""The bundle's manifest: every file's SHA-256 and size, signed; and the check of a bundle against it.

    bundle.json       {"format", "created", "expires", "signer", "files": {relative path: {"sha256", "size"}}}
    bundle.json.asc   detached OpenPGP signature of bundle.json's exact bytes

`verify_bundle` reads bundle.json once and checks the signature over those bytes with the one
trusted key first (nothing in an unsigned or foreign manifest is believed), then that the directory
holds exactly the listed files with their sizes and hashes, and names every file that differs.
What the roles use afterwards comes from the verified result, never from a second read: the
manifest and lock.json are kept in memory as verified, and every file pushed to a host is checked
there against the SHA-256 of the signed manifest (whoever can write bundle_dir during a deploy
cannot swap a file between the check and its use).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..progress import byte_progress
from .lock import LOCK_FILE, VALID_DAYS
from .signing import BundleSigner, SigningError, verify_detached_bytes

MANIFEST_FILE = "bundle.json"
SIGNATURE_FILE = "bundle.json.asc"
FORMAT = "deepfleet-bundle/1"
_BLOCK = 1 << 20


class BundleError(RuntimeError):
    """A bundle is incomplete, changed or not signed by the trusted key; the message names the files."""


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature and every file checked out, and where it keeps each part."""

    root: Path
    manifest: dict
    signer: str  # fingerprint of the key that signed it
    lock: dict  # lock.json as verified (its bytes hashed against the signed manifest)

    @property
    def size(self) -> int:
        return sum(entry["size"] for entry in self.manifest["files"].values())

    def signed_sha256(self, path: Path) -> str:
        """The signed SHA-256 of the bundle file at `path` (absolute, or relative to the root);
        BundleError when the signed manifest does not list it."""
        relative = Path(path).relative_to(self.root).as_posix() if Path(path).is_absolute() else Path(path).as_posix()
        if relative not in self.manifest["files"]:
            raise BundleError(f"bundle {self.root}: {relative} is not in the signed manifest; the bundle's "
                              "lock names a file the signer did not sign. Build the bundle again")
        return self.manifest["files"][relative]["sha256"]

    def files_under(self, prefix: str) -> dict[str, dict]:
        """{path relative to `prefix`: {"sha256", "size"}} of the files in one part of the bundle."""
        start = prefix.rstrip("/") + "/"
        return {path[len(start):]: entry for path, entry in self.manifest["files"].items() if path.startswith(start)}

    def apt_repo(self, target: str) -> str:
        """The apt repository of one OS target ("debian-12-amd64"), relative to the root."""
        return self._part("os", target, "packages for", f"apt/{target}")

    def rpm_repo(self, target: str) -> str:
        """The dnf repository of one RHEL-family target ("rocky-9-amd64"), relative to the root."""
        return self._part("os", target, "packages for", f"rpm/{target}")

    def wheel_entry(self, target: str) -> dict:
        """The lock's entry of one wheelhouse target (see spec.WheelTarget.key)."""
        return self._part("wheelhouses", target, "wheels for")

    def image(self, reference: str) -> str:
        """The tarball of one image, relative to the root."""
        return self._part("images", reference, "the image")["file"]

    def model(self, name: str) -> str:
        """The encrypted release of one model, relative to the root."""
        return self._part("models", name, "the model")["dir"]

    def _part(self, section: str, key: str, what: str, found=None):
        held = self.lock[section]
        if key not in held:
            raise BundleError(f"bundle {self.root} holds no {what} {key} (it holds: {', '.join(sorted(held)) or 'none'}); "
                              "build a bundle from the inventory you deploy")
        return found if found is not None else held[key]


def list_files(root: Path) -> list[str]:
    """Every regular file under `root` as a sorted relative POSIX path, manifest and signature left out."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if relative not in (MANIFEST_FILE, SIGNATURE_FILE):
                found.append(relative)
    return sorted(found)


def hash_files(root: Path, paths: list[str], description: str, log=None) -> dict[str, dict]:
    """{path: {"sha256", "size"}} for `paths` under `root`, with a progress bar."""
    total = sum((root / path).stat().st_size for path in paths)
    entries = {}
    with byte_progress(description, total, log) as advance:
        for path in paths:
            digest, size = hashlib.sha256(), 0
            with open(root / path, "rb") as handle:
                while block := handle.read(_BLOCK):
                    digest.update(block)
                    size += len(block)
                    advance(len(block))
            entries[path] = {"sha256": digest.hexdigest(), "size": size}
    return entries


def write_manifest(root: Path, created: str, signer: BundleSigner, signed_at, log=None, expires=None) -> dict:
    """Hash every file under `root`, write bundle.json (refused by verify_bundle after `expires`,
    by default VALID_DAYS after `signed_at`) and sign it; returns the manifest."""
    expires = expires or signed_at + datetime.timedelta(days=VALID_DAYS)
    manifest = {"format": FORMAT, "created": created, "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "signer": signer.fingerprint(),
                "files": hash_files(root, list_files(root), "Hashing the bundle", log)}
    path = root / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    signer.sign(path, signed_at)
    return manifest


def verify_bundle(root: Path, trusted_key: Path, log=None) -> VerifiedBundle:
    """Check `root` against its signed manifest; BundleError naming every file that is wrong."""
    root = Path(root)
    if not (root / MANIFEST_FILE).is_file():
        raise BundleError(f"{root} is not a bundle: it has no {MANIFEST_FILE} (build one with "
                          "`deepfleet bundle build INVENTORY --out DIR`)")
    if not (root / SIGNATURE_FILE).is_file():
        raise BundleError(f"{root}: {SIGNATURE_FILE} is missing, so {MANIFEST_FILE} cannot be trusted")
    manifest_bytes = (root / MANIFEST_FILE).read_bytes()  # read once: these bytes are verified, then parsed
    try:
        signer = verify_detached_bytes(manifest_bytes, (root / SIGNATURE_FILE).read_bytes(), trusted_key,
                                       MANIFEST_FILE, SIGNATURE_FILE)
    except SigningError as exc:
        raise BundleError(f"{root}: {exc}") from None
    manifest = json.loads(manifest_bytes)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{root}: {MANIFEST_FILE} has format {manifest.get('format')!r}; this deepfleet "
                          f"reads {FORMAT}")
    _check_expiry(root, manifest)
    listed = manifest["files"]
    present = list_files(root)
    problems = [f"{path}: not in the manifest (added after the bundle was signed)"
                for path in present if path not in listed]
    problems += [f"{path}: missing" for path in listed if not (root / path).is_file()]
    wrong_size = [path for path in present if path in listed and (root / path).stat().st_size != listed[path]["size"]]
    problems += [f"{path}: {(root / path).stat().st_size} bytes, the manifest says {listed[path]['size']}"
                 for path in wrong_size]
    checkable = [path for path in present if path in listed and path not in wrong_size and path != LOCK_FILE]
    lock_bytes = _read_lock(root, listed, problems) if LOCK_FILE not in wrong_size else None
    actual = hash_files(root, checkable, f"Verifying {root.name}", log)
    problems += [f"{path}: SHA-256 differs from the manifest (changed or damaged)"
                 for path in checkable if actual[path]["sha256"] != listed[path]["sha256"]]
    if problems:
        shown = "\n  ".join(sorted(problems)[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise BundleError(f"bundle {root} failed verification:\n  {shown}{more}\n"
                          "Build or copy the bundle again; never edit a signed bundle")
    return VerifiedBundle(root, manifest, signer, json.loads(lock_bytes))


def _read_lock(root: Path, listed: dict, problems: list[str]) -> bytes | None:
    """lock.json's bytes, read once and checked against the signed manifest; None (and a problem
    named) when they are not the signed ones."""
    if LOCK_FILE not in listed:
        problems.append(f"{LOCK_FILE}: not in the manifest")
        return None
    if not (root / LOCK_FILE).is_file():
        return None  # named as missing already
    lock_bytes = (root / LOCK_FILE).read_bytes()
    if hashlib.sha256(lock_bytes).hexdigest() != listed[LOCK_FILE]["sha256"]:
        problems.append(f"{LOCK_FILE}: SHA-256 differs from the manifest (changed or damaged)")
        return None
    return lock_bytes


def _check_expiry(root: Path, manifest: dict) -> None:
    """An old bundle (outdated runtime, withdrawn release) is not installed again: its signed
    `expires` must lie ahead."""
    expires = manifest.get("expires")
    if not expires:
        raise BundleError(f"{root}: {MANIFEST_FILE} carries no expiry (built by an older deepfleet); build a new "
                          "bundle")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if expires < now:
        raise BundleError(f"{root}: the bundle expired on {expires} (it is {now}); build a new bundle "
                          "(`deepfleet bundle build INVENTORY --out DIR`), signed today")
