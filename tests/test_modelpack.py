"""Model keys and releases on the control side, through the `deepfleet model` commands."""

from __future__ import annotations

import json

import pytest

from deepfleet.cli import main
from deepfleet.modelkeys import ModelKeysError, create_model_keys, load_model_keys
from deepfleet.modelpack import ensure_release
from deepfleet_runtime.modelstore import Release
from deepfleet_runtime.modelstore.keys import wrapping_kek_id


@pytest.fixture
def model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "torchao"}}))
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 5000)
    return model


@pytest.fixture
def keys(tmp_path):
    return create_model_keys(tmp_path / "keys")[0]


def test_keys_are_created_once_private_and_listed_without_material(tmp_path, capsys):
    assert main(["model", "keys", "create", "--keys-dir", str(tmp_path / "k")]) == 0
    keys = load_model_keys(tmp_path / "k")
    assert create_model_keys(tmp_path / "k")[1] is False  # kept, never overwritten
    assert oct((tmp_path / "k").stat().st_mode & 0o777) == "0o700"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "k").iterdir() if p.suffix == ".key"} == {
        "model-signing.key": "0o600", f"model-kek-{keys.current_kek_id()}.key": "0o600"}
    main(["model", "keys", "list", "--keys-dir", str(tmp_path / "k")])
    listing = capsys.readouterr().out
    assert f"KEK {keys.current_kek_id()}" in listing and "(current)" in listing
    assert keys.kek_files()[keys.current_kek_id()].read_text().strip() not in listing


def test_missing_keys_name_the_command_that_creates_them(tmp_path):
    with pytest.raises(ModelKeysError, match="deepfleet model keys create"):
        load_model_keys(tmp_path / "nothing")


def test_encrypt_verify_and_refuse_to_overwrite(model, keys, tmp_path, capsys):
    out = tmp_path / "release"
    args = ["--keys-dir", str(keys.path)]
    assert main(["model", "encrypt", str(model), "--out", str(out), "--name", "m", *args]) == 0
    assert "quantization torchao" in capsys.readouterr().out
    assert main(["model", "verify", str(out), *args]) == 0
    assert "verified (signature, data key, every chunk and hash)" in capsys.readouterr().out
    assert main(["model", "encrypt", str(model), "--out", str(out), "--name", "m", *args]) == 1
    assert "already exists" in capsys.readouterr().err
    (out / "manifest.json").write_text((out / "manifest.json").read_text().replace("torchao", "none"))
    assert main(["model", "verify", str(out), *args]) == 1
    assert "signature does not verify" in capsys.readouterr().err


def test_rotation_rewraps_data_keys_without_touching_weights(model, keys, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFLEET_CACHE", str(tmp_path / "cache"))
    cached = ensure_release(model, "m", keys, tmp_path / "cache")
    weights_before = (cached / "encrypted" / "model.safetensors").read_bytes()
    old_kek = keys.current_kek_id()
    assert main(["model", "keys", "rotate", "--keys-dir", str(keys.path)]) == 0
    new_kek = keys.current_kek_id()
    assert new_kek != old_kek and set(keys.kek_files()) == {old_kek, new_kek}
    assert wrapping_kek_id((cached / "key.json").read_bytes(), "key.json") == new_kek
    assert (cached / "encrypted" / "model.safetensors").read_bytes() == weights_before
    assert Release.open(cached, keys.keys).read_file("model.safetensors") == (model / "model.safetensors").read_bytes()


def test_the_deploy_cache_encrypts_once_per_content(model, keys, tmp_path):
    first = ensure_release(model, "m", keys, tmp_path / "cache")
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert ensure_release(model, "m", keys, tmp_path / "cache") == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp  # reused, not re-encrypted
    (model / "model.safetensors").write_bytes(b"new weights")
    second = ensure_release(model, "m", keys, tmp_path / "cache")
    assert second != first and second.name.startswith("m@")
    other_keys = create_model_keys(tmp_path / "other-keys")[0]
    assert ensure_release(model, "m", other_keys, tmp_path / "cache") != second  # other signer, other cache entry


def test_an_encrypted_release_as_model_source_must_match_the_model_name(model, keys, tmp_path):
    main(["model", "encrypt", str(model), "--out", str(tmp_path / "r"), "--name", "m", "--keys-dir", str(keys.path)])
    assert ensure_release(tmp_path / "r", "m", keys, tmp_path / "cache") == tmp_path / "r"
    with pytest.raises(ValueError, match="set model_name to 'm'"):
        ensure_release(tmp_path / "r", "other", keys, tmp_path / "cache")


def test_each_new_release_of_a_model_gets_the_next_number(tiny_model_dir, tmp_path):
    from deepfleet.modelkeys import create_model_keys
    from deepfleet.modelpack import encrypt_model

    keys, _ = create_model_keys(tmp_path / "keys")
    first = encrypt_model(tiny_model_dir, tmp_path / "one", "tiny", keys, log=lambda _: None)
    second = encrypt_model(tiny_model_dir, tmp_path / "two", "tiny", keys, log=lambda _: None)
    other = encrypt_model(tiny_model_dir, tmp_path / "three", "other", keys, log=lambda _: None)
    assert (first.sequence, second.sequence, other.sequence) == (1, 2, 1)
