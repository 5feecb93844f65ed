"""A plain model directory on the control machine, and its file hashes.

Hashing a 150 GB model takes minutes, so hashes are cached by (path, size, mtime) under the
cache directory and recomputed only for files that changed. The model role uses them to find an
already encrypted release of the same content (deepfleet.modelpack) without re-reading the model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deepfleet_runtime.modelstore.writer import model_files

from .atomicfile import write_atomic
from .digests import sha256_file


class ModelSourceError(ValueError):
    """The model directory is missing or not a model; the message names the fix."""


def check_model_dir(source: Path) -> Path:
    """`source`, if it is a model directory: a transformers one (config.json, weights, tokenizer) or, for
    the llamacpp engine, one holding a single .gguf file; ModelSourceError with the fix otherwise."""
    source = Path(source)
    if (source / "config.json").is_file():
        return source
    ggufs = [name for name in model_files(source) if name.endswith(".gguf")] if source.is_dir() else []
    if len(ggufs) == 1:
        return source
    if ggufs:
        raise ModelSourceError(f"{source} holds {len(ggufs)} .gguf files; the llamacpp engine serves exactly one: "
                               "point model_source at a directory holding only the one to serve")
    raise ModelSourceError(f"{source} is not a model directory (no config.json, no .gguf file); set model_source "
                           "to a transformers model directory, a directory holding one .gguf file (llamacpp), or "
                           "an encrypted release, or build the tiny demo model with "
                           "`deepfleet-runtime tiny-model --out DIR`")


def local_manifest(source: Path, cache_dir: Path) -> dict[str, str]:
    """{relative path: sha256} for every file in the model directory `source`."""
    source = check_model_dir(source)
    cache_file = Path(cache_dir) / "manifests" / (hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16] + ".json")
    cached = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    manifest, stamps = {}, {}
    for name in model_files(source):
        stat = (source / name).stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = cached.get(name)
        digest = entry["sha256"] if entry and entry["stamp"] == stamp else sha256_file(source / name)
        manifest[name], stamps[name] = digest, {"stamp": stamp, "sha256": digest}
    if stamps != cached:
        write_atomic(cache_file, json.dumps(stamps, indent=1, sort_keys=True) + "\n")
    return manifest
