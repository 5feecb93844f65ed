"""Loading: an encrypted release gives the same model as its plain directory, decrypted only into
memory; a damaged release loads nothing and says which file is at fault."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from deepfleet_runtime.engines.loading import ModelLoadError, load_model_and_tokenizer, tensors_from_safetensors
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from deepfleet_runtime.modelstore import ModelStoreError
from deepfleet_runtime.modelstore.tmpfs import MEMORY_FILESYSTEMS, decrypted_copy, filesystem_type, private_memory_dir
from tests.runtime.conftest import WEIGHTS

PROMPT = "The quick brown fox"


@pytest.fixture
def runtime_dir(monkeypatch):
    """An empty RUNTIME_DIRECTORY on a tmpfs, as systemd gives the runtime."""
    directory = Path(tempfile.mkdtemp(prefix="runtime-dir-", dir="/dev/shm"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_encrypted_release_loads_the_same_model_and_leaves_nothing_behind(store, tiny_model_dir, runtime_dir):
    model, tokenizer = load_model_and_tokenizer(store.release, keys_dir=store.root / "keys")
    plain_model, plain_tokenizer = load_model_and_tokenizer(tiny_model_dir)
    ids = plain_tokenizer.encode(PROMPT)
    assert tokenizer.encode(PROMPT) == ids
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        plain_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    with torch.no_grad():
        assert torch.equal(model(input_ids=torch.tensor([ids])).logits,
                           plain_model(input_ids=torch.tensor([ids])).logits)
    assert model.generation_config.to_dict() == plain_model.generation_config.to_dict()
    assert list(runtime_dir.iterdir()) == []  # the scratch directory for config/tokenizer is wiped


def test_a_tampered_release_loads_nothing_and_names_the_file(store, tmp_path, runtime_dir):
    release = tmp_path / "release"
    shutil.copytree(store.release, release)
    data = bytearray((release / "encrypted" / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0x80
    (release / "encrypted" / WEIGHTS).write_bytes(bytes(data))
    engine = TransformersEngine("tiny", release, keys_dir=store.root / "keys")
    with pytest.raises(ModelLoadError, match=rf"refusing to load .*: {WEIGHTS}: chunk \d+ failed authentication"):
        engine.load()
    assert not engine.ready and engine._model is None
    assert list(runtime_dir.iterdir()) == []


def test_a_release_without_keys_is_a_clear_error(store):
    with pytest.raises(ModelLoadError, match="is an encrypted release; set model.keys_dir"):
        load_model_and_tokenizer(store.release)


def test_decrypted_files_never_go_to_a_disk_directory():
    on_disk = Path(__file__).resolve().parent  # the checkout; refused before anything is created
    if filesystem_type(on_disk) in MEMORY_FILESYSTEMS:
        pytest.skip("this checkout lives on a memory filesystem")
    with pytest.raises(ModelStoreError, match="not in memory; decrypted model files must never reach a disk"):
        with private_memory_dir(on_disk):
            pass


def test_the_private_memory_directory_is_0700_and_wiped(runtime_dir):
    with private_memory_dir() as scratch:
        (scratch / "config.json").write_text("{}")
        assert scratch.parent == runtime_dir and (os.stat(scratch).st_mode & 0o777) == 0o700
    assert not scratch.exists()


def test_safetensors_views_equal_the_safetensors_library():
    from safetensors.torch import load, save

    tensors = {"f32": torch.randn(3, 5), "bf16": torch.randn(4, 2).to(torch.bfloat16), "f16": torch.randn(7).half(),
               "i64": torch.arange(6).reshape(2, 3), "flag": torch.tensor([True, False]), "empty": torch.zeros(0, 4),
               "u8": torch.arange(5, dtype=torch.uint8)}
    data = save(tensors, metadata={"format": "pt"})
    ours, theirs = tensors_from_safetensors(bytearray(data), "t.safetensors"), load(data)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name


def test_a_whole_release_decrypts_into_private_memory_and_is_wiped(store, tiny_model_dir, runtime_dir):
    with decrypted_copy(store.release, store.root / "keys") as files:
        assert files.parent == runtime_dir
        assert sorted(p.name for p in files.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
        assert (files / WEIGHTS).read_bytes() == (tiny_model_dir / WEIGHTS).read_bytes()
    assert list(runtime_dir.iterdir()) == []


def test_a_release_larger_than_the_memory_filesystem_is_refused_before_decrypting(store, runtime_dir, monkeypatch):
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((*real(path)[:4], 0, *real(path)[5:])))
    with pytest.raises(ModelStoreError, match="GiB free in memory.*give it a tmpfs of its own with the inventory setting runtime_decrypt_tmpfs_size"):
        with decrypted_copy(store.release, store.root / "keys"):
            pass
    assert list(runtime_dir.iterdir()) == []


def test_the_decrypted_copy_goes_to_the_units_own_tmpfs_when_it_has_one(store, runtime_dir, monkeypatch):
    own = runtime_dir / "decrypted"  # as the unit's TemporaryFileSystem (runtime_decrypt_tmpfs_size)
    own.mkdir()
    monkeypatch.setenv("DEEPFLEET_DECRYPT_DIR", str(own))
    with decrypted_copy(store.release, store.root / "keys") as files:
        assert files.parent == own
