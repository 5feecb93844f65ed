"""A model directory on the control machine: its manifest of file hashes and its release id.

Hashing a 150 GB model takes minutes, so hashes are cached by (path, size, mtime) under the
cache directory and recomputed only for files that changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomicfile import write_atomic
from .digests import sha256_file


class ModelSourceError(ValueError):
    """The model directory is missing or not a model; the message names the fix."""


def local_manifest(source: Path, cache_dir: Path) -> dict[str, str]:
    """{relative path: sha256} for every file in the model directory `source`."""
    source = Path(source)
    if not (source / "config.json").is_file():
        raise ModelSourceError(f"{source} is not a model directory (no config.json); set model_source "
                               "to a transformers model directory, or build the tiny demo model with "
                               "`deepfleet-runtime tiny-model --out DIR`")
    cache_file = Path(cache_dir) / "manifests" / (hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16] + ".json")
    cached = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    manifest, stamps = {}, {}
    for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")):
        name = path.relative_to(source).as_posix()
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = cached.get(name)
        digest = entry["sha256"] if entry and entry["stamp"] == stamp else sha256_file(path)
        manifest[name], stamps[name] = digest, {"stamp": stamp, "sha256": digest}
    if stamps != cached:
        write_atomic(cache_file, json.dumps(stamps, indent=1, sort_keys=True) + "\n")
    return manifest


def release_id(manifest: dict[str, str]) -> str:
    """A short id naming exactly this set of files."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
