"""gateway.yaml mistakes are refused with a message that names the fix."""

from __future__ import annotations

import pytest
import yaml

from deepfleet_runtime.configfile import ConfigError
from deepfleet_runtime.gateway.config import load_gateway_config

BASE = {"tls": {"cert": "/c", "key": "/k"}, "api_keys_file": "/keys", "audit": {"dir": "/audit"},
        "upstreams": [{"url": "http://127.0.0.1:8000"}]}


@pytest.mark.parametrize("change, message", [
    ({"upstreams": []}, "at least one runtime replica"),
    ({"upstreams": [{"url": "http://a:1"}, {"url": "http://b:1", "name": "a:1"}]}, "names must be unique"),
    ({"upstreams": [{"url": "https://10.0.0.2:8000"}]}, "needs an upstream_tls section"),
    ({"metrics": {"host": "0.0.0.0", "port": 9464}}, "loopback only"),
    ({"audit": {"dir": "/a", "content": "some"}}, "'full', 'sha256'"),
    ({"limits": {"max_in_flight": "many"}}, "expected int"),
    ({"routing": {"retries": 3}}, "unknown key"),
])
def test_bad_gateway_config_names_the_fix(tmp_path, change, message):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**BASE, **change}))
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(path)


def test_defaults_fill_what_is_left_out(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**BASE, "metrics": None}))
    config = load_gateway_config(path)
    assert config.metrics is None and config.admin_socket is None
    assert (config.listen.port, config.limits.max_queued, config.routing.max_attempts) == (8443, 256, 3)
    assert config.upstreams[0].url == "http://127.0.0.1:8000"
