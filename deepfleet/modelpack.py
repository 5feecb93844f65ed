"""Encrypted model releases on the control machine: encrypt, verify, re-wrap, and the cache of
releases the model role pushes.

The format is deepfleet_runtime.modelstore (docs/model-format.md); keys are deepfleet.modelkeys.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from deepfleet_runtime.modelstore import ModelStoreError, Release, is_release
from deepfleet_runtime.modelstore.keys import wrapping_kek_id
from deepfleet_runtime.modelstore.manifest import Manifest, content_release_id
from deepfleet_runtime.modelstore.release import KEY_FILE, read_signed_manifest
from deepfleet_runtime.modelstore.writer import model_files, replace_key_file, write_release

from .filelock import exclusive_lock
from .modelkeys import ModelKeys
from .modelsource import ModelSourceError, check_model_dir, local_manifest
from .progress import byte_progress

CACHE_SUBDIR = "model-releases"


def detect_quantization(source: Path) -> str:
    """The quantisation named in config.json (`quantization_config.quant_method`), else "none"."""
    try:
        config = json.loads((Path(source) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "none"
    method = (config.get("quantization_config") or {}).get("quant_method")
    return str(method) if method else "none"


def encrypt_model(source: Path, out_dir: Path, name: str, keys: ModelKeys, quantization: str | None = None,
                  log=None) -> Manifest:
    """Encrypt the model directory `source` into the release directory `out_dir`, signed and
    numbered one above the model's last release (hosts refuse to go back below a number they served)."""
    source = check_model_dir(source)
    signing_key = keys.signing_key()  # a verify-only directory stops here, before any work
    total = sum((source / path).stat().st_size for path in model_files(source))
    with byte_progress(f"Encrypting {name}", total, log) as advance:
        return write_release(source, out_dir, name, keys.current_kek(), signing_key,
                             quantization or detect_quantization(source), progress=advance,
                             sequence=keys.next_sequence(name))


def verify_release_dir(release_dir: Path, keys: ModelKeys, decrypt: bool = True, log=None) -> Manifest:
    """Check a release: signature, data key, and (with `decrypt`) every chunk and hash."""
    release = Release.open(release_dir, keys.keys)
    if decrypt:
        total = sum(entry.size for entry in release.manifest.files)
        with byte_progress(f"Verifying {release.manifest.release_name}", total, log) as advance:
            release.verify(advance)
    return release.manifest


def rewrap_release(release_dir: Path, keys: ModelKeys) -> tuple[str, str] | None:
    """Re-wrap a release's data key with the current KEK (weights untouched). Returns (old id, new id),
    or None when it already uses the current KEK."""
    release_dir = Path(release_dir)
    current = keys.current_kek_id()
    old = wrapping_kek_id((release_dir / KEY_FILE).read_bytes(), str(release_dir / KEY_FILE))
    if old == current:
        return None
    release = Release.open(release_dir, keys.keys)
    replace_key_file(release_dir, release.key_file_wrapped_with(keys.current_kek()))
    return old, current


def cached_releases(cache_dir: Path, keys: ModelKeys) -> list[Path]:
    """The releases in the model role's cache that `keys` signed."""
    root = Path(cache_dir) / CACHE_SUBDIR / keys.signing_key_id()
    return sorted(path.parent for path in root.glob("*/manifest.json"))


def ensure_release(source: Path, name: str, keys: ModelKeys, cache_dir: Path, log=None) -> Path:
    """The encrypted release to push for `source`.

    `source` is either an encrypted release (from `deepfleet model encrypt`; its signature must
    verify with these keys) or a plain model directory, encrypted once into the cache and reused
    while its content (hashes cached by size and mtime) and the keys stay the same.
    """
    source = Path(source)
    if is_release(source):
        manifest = read_signed_manifest(source, keys.keys)
        if manifest.name != name:
            raise ModelSourceError(f"{source} is a release of model {manifest.name!r}, but model_name is "
                                   f"{name!r}; set model_name to {manifest.name!r} or encrypt with --name {name}")
        return source
    hashes = local_manifest(source, cache_dir)
    quantization = detect_quantization(source)
    release = content_release_id(name, quantization,
                                 [(path, (source / path).stat().st_size, digest) for path, digest in hashes.items()])
    root = Path(cache_dir) / CACHE_SUBDIR / keys.signing_key_id()
    target = root / f"{name}@{release}"
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / ".lock"):  # hosts of one deploy ask concurrently
        if target.exists():
            try:
                rewrap_release(target, keys)
                return target
            except ModelStoreError as exc:  # e.g. wrapped with a KEK this keyring no longer has
                (log or print)(f"re-encrypting the cached release {target.name}: {exc}")
                shutil.rmtree(target)
        manifest = encrypt_model(source, target, name, keys, quantization, log)
    if manifest.release != release:
        shutil.rmtree(target)
        raise ModelSourceError(f"{source} changed while it was being encrypted; run the deploy again")
    return target
