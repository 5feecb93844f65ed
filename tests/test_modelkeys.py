"""Model keys: a missing keys directory is refused with a command that creates it, as written."""

from __future__ import annotations

import re
import shlex

import pytest

from deepfleet.cli import main
from deepfleet.modelkeys import ModelKeysError, load_model_keys


def test_missing_keys_name_the_command_that_creates_them_and_that_command_works(tmp_path):
    with pytest.raises(ModelKeysError) as error:
        load_model_keys(tmp_path / "keys")
    command = re.search(r"`deepfleet (model keys create [^`]+)`", str(error.value)).group(1)
    assert main(shlex.split(command)) == 0
    assert load_model_keys(tmp_path / "keys").path == tmp_path / "keys"
