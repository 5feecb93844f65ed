"""The README's two set-up commands install what their job uses and no more: `make demo` neither
compiles llama.cpp nor installs the test suite's tools; `make test` brings both. Read from what make
would run (`make -n -B`: every recipe, nothing executed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from deepfleet.paths import PROJECT_ROOT

TEST_ONLY = ("llamacpp", "redis-server", "createrepo", "rpmbuild", "'.[test]'")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _would_run(target: str) -> str:
    result = subprocess.run(["make", "-n", "-B", target], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_demo_installs_only_what_the_demo_uses():
    demo = _would_run("demo")
    assert "deepfleet demo" in demo and "debootstrap" in demo and "docker.io" in demo
    assert [word for word in TEST_ONLY if word in demo] == []


def test_make_test_installs_the_engines_and_tools_the_tests_run():
    test = _would_run("test")
    assert [word for word in TEST_ONLY if word not in test] == []
    assert "-m pytest" in test
