"""docs/model-format.md is enough to write a decryptor: its reference decryptor, which uses nothing
from deepfleet, opens a real release of the tiny model."""

from __future__ import annotations

import re

import pytest

from deepfleet.modelkeys import create_model_keys
from deepfleet.modelpack import encrypt_model
from deepfleet.paths import PROJECT_ROOT


def _reference_decryptor():
    text = (PROJECT_ROOT / "docs" / "model-format.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[-1]
    assert "import deepfleet" not in code and "from deepfleet" not in code
    namespace = {"__name__": "reference_decryptor"}
    exec(compile(code, "docs/model-format.md", "exec"), namespace)
    return namespace["decrypt_release"]


def test_the_documented_decryptor_opens_a_release(tiny_model_dir, tmp_path):
    keys, _ = create_model_keys(tmp_path / "keys")
    manifest = encrypt_model(tiny_model_dir, tmp_path / "release", "tiny", keys, log=lambda _: None)
    _reference_decryptor()(tmp_path / "release", keys.path, tmp_path / "plain")
    for entry in manifest.files:
        assert (tmp_path / "plain" / entry.path).read_bytes() == (tiny_model_dir / entry.path).read_bytes()


def test_the_documented_decryptor_refuses_a_tampered_chunk(tiny_model_dir, tmp_path):
    from cryptography.exceptions import InvalidTag

    keys, _ = create_model_keys(tmp_path / "keys")
    encrypt_model(tiny_model_dir, tmp_path / "release", "tiny", keys, log=lambda _: None)
    weights = tmp_path / "release" / "encrypted" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100_000] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(InvalidTag):
        _reference_decryptor()(tmp_path / "release", keys.path, tmp_path / "plain")
