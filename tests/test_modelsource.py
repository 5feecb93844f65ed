"""Model directories on the control side: cached hashes."""

from __future__ import annotations

import os

import pytest

from deepfleet.modelsource import ModelSourceError, local_manifest


def _model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\0" * 1000)
    (model / ".cache").mkdir()
    (model / ".cache" / "download.lock").write_text("")
    return model


def test_hashes_follow_content_and_skip_hidden_files(tmp_path):
    model = _model(tmp_path)
    cache = tmp_path / "cache"
    first = local_manifest(model, cache)
    assert sorted(first) == ["config.json", "weights.bin"]
    (model / "weights.bin").write_bytes(b"\1" * 1001)
    assert local_manifest(model, cache)["weights.bin"] != first["weights.bin"]


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


def test_a_directory_holding_one_gguf_file_is_a_model(tmp_path):
    model = tmp_path / "gguf"
    model.mkdir()
    (model / "model-q4_0.gguf").write_bytes(b"GGUF weights")
    assert list(local_manifest(model, tmp_path / "cache")) == ["model-q4_0.gguf"]


def test_a_directory_of_several_gguf_files_and_no_config_is_refused_with_the_count(tmp_path):
    for name in ("a-q4_0.gguf", "a-q8_0.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match="holds 2 .gguf files; the llamacpp engine serves exactly one"):
        local_manifest(tmp_path, tmp_path / "cache")
