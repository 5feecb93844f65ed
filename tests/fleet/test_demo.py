"""`deepfleet demo` end to end: up, up again with zero changes, a real answer, then down."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from deepfleet.paths import cache_dir

pytestmark = pytest.mark.fleet


def _deepfleet(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPFLEET_HOME": str(home), "DEEPFLEET_CACHE": str(cache_dir())}
    command = [str(Path(sys.executable).parent / "deepfleet"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def test_demo_up_twice_then_down(tmp_path, tiny_model_dir):
    home = tmp_path / "home"
    first = _deepfleet(home, "demo")
    try:
        assert first.returncode == 0, first.stderr[-3000:]
        assert "Answer" in first.stdout
        connection_file = home / "demo" / "connection.json"
        assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
        connection = json.loads(connection_file.read_text())
        assert set(connection) == {"base_url", "ca_cert", "api_key", "model"}
        assert connection["api_key"] not in first.stdout + first.stderr

        second = _deepfleet(home, "demo")
        assert second.returncode == 0, second.stderr[-3000:]
        assert "Changes    0 " in second.stdout

        http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=connection["ca_cert"]))
        with openai.OpenAI(base_url=connection["base_url"], api_key=connection["api_key"], http_client=http) as client:
            answer = client.chat.completions.create(model=connection["model"], max_tokens=8,
                                                    messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
        fleet_id = json.loads((home / "demo" / "hosts" / "fleet.json").read_text())["fleet_id"]
    finally:
        down = _deepfleet(home, "demo", "--down")
    assert down.returncode == 0, down.stderr
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=deepfleet.fleet={fleet_id}"],
                          capture_output=True, text=True, check=True).stdout
    assert left == ""
    assert not (home / "demo").exists()
