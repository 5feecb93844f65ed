"""deepfleet's model format: releases encrypted at rest, signed, read on hosts (docs/model-format.md).

    chunks.py        one file as a stream of AES-256-GCM chunks
    keys.py          KEKs, the verify key, wrapping of per-release data keys
    manifest.py      manifest.json: files, sizes, hashes; Ed25519 signature; release ids
    release.py       reading a release: verify, decrypt into memory
    writer.py        writing a release from a model directory (control side)
    hostreleases.py  a host's releases: verify, atomic switch, keep N, rollback
    tmpfs.py         a private in-memory directory for files engines read by path
"""

from .errors import ModelStoreError
from .keys import KeyDirectory
from .release import Release, is_release

__all__ = ["KeyDirectory", "ModelStoreError", "Release", "is_release"]
