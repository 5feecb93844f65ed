"""Model manifests on the control side: cached hashes, release ids that follow content."""

from __future__ import annotations

import os

import pytest

from deepfleet.modelsource import ModelSourceError, local_manifest, release_id


def _model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\0" * 1000)
    return model


def test_release_id_changes_with_content_only(tmp_path):
    model = _model(tmp_path)
    cache = tmp_path / "cache"
    first = release_id(local_manifest(model, cache))
    assert release_id(local_manifest(model, cache)) == first
    (model / "weights.bin").write_bytes(b"\1" * 1000)
    assert release_id(local_manifest(model, cache)) != first


def test_cached_hashes_are_used_while_size_and_mtime_match(tmp_path):
    model = _model(tmp_path)
    cache = tmp_path / "cache"
    manifest = local_manifest(model, cache)
    stat = (model / "weights.bin").stat()
    # Same size and mtime, different bytes: the cache is trusted (that is what makes re-runs cheap).
    (model / "weights.bin").write_bytes(b"\2" * 1000)
    os.utime(model / "weights.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert local_manifest(model, cache) == manifest


def test_a_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelSourceError, match="tiny-model"):
        local_manifest(tmp_path, tmp_path / "cache")
