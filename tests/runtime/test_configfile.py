"""Config files: typos and bad values are errors that name the key and the fix."""

from __future__ import annotations

import pytest

from deepfleet_runtime.config import load_runtime_config
from deepfleet_runtime.configfile import ConfigError


def _write(tmp_path, text):
    path = tmp_path / "runtime.yaml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults(tmp_path):
    config = load_runtime_config(_write(tmp_path, "model: {name: m, path: /models/m}\n"))
    assert config.server.host == "127.0.0.1"
    assert config.limits.max_tokens == 1024
    assert str(config.model.path) == "/models/m"


@pytest.mark.parametrize("text, message", [
    ("model: {name: m, path: /m}\nsevrer: {port: 1}\n", "unknown key(s) sevrer"),
    ("model: {name: m}\n", "required key 'path' is missing"),
    ("model: {name: m, path: /m}\nserver: {port: eighty}\n", "server: port: expected int"),
    ("model: {name: m, path: /m}\ndtype: float8\n", "not one of"),
    ("model: [1, 2]\n", "expected a mapping"),
    ("model: {name: m, path: /m\n", "not valid YAML"),
])
def test_bad_configs_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_runtime_config(_write(tmp_path, text))


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="--config"):
        load_runtime_config(tmp_path / "nope.yaml")
