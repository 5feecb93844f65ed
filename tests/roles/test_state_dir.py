"""DEEPFLEET_HOME moves the roles' control-side state with the `deepfleet` command's: the CA, the API
keyring, the model keys, the bundle key, and (with DEEPFLEET_CACHE unset) the cache."""

from __future__ import annotations

from deepfleet.apikeys import create_key
from deepfleet.modelkeys import create_model_keys
from deepfleet.paths import PROJECT_ROOT, SITE_DEPLOY
from deepfleet.pki import init_ca
from roles.common import control_path
from roles.defaults import DEFAULTS

from .factplan import find, load_case, plan

STATE_SETTINGS = ("gateway_pki_dir", "gateway_api_keyring", "model_keys_dir", "bundle_trusted_key")


def test_the_roles_state_follows_deepfleet_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEEPFLEET_CACHE", raising=False)
    paths = {name: control_path(DEFAULTS[name], name) for name in (*STATE_SETTINGS, "deepfleet_cache_dir")}
    assert paths == {"gateway_pki_dir": tmp_path / "home" / "pki",
                     "gateway_api_keyring": tmp_path / "home" / "api-keys.json",
                     "model_keys_dir": tmp_path / "home" / "model-keys",
                     "bundle_trusted_key": tmp_path / "home" / "bundle-keys" / "bundle-signing.asc",
                     "deepfleet_cache_dir": tmp_path / "home" / "cache"}
    monkeypatch.setenv("DEEPFLEET_CACHE", str(tmp_path / "cache"))
    assert control_path(DEFAULTS["deepfleet_cache_dir"], "deepfleet_cache_dir") == tmp_path / "cache"


def test_without_deepfleet_home_the_state_is_deepfleet_in_the_project(monkeypatch):
    monkeypatch.delenv("DEEPFLEET_HOME", raising=False)
    assert control_path(DEFAULTS["gateway_pki_dir"], "gateway_pki_dir") == PROJECT_ROOT / ".deepfleet" / "pki"
    assert control_path("certs/ca", "gateway_pki_dir") == PROJECT_ROOT / "certs" / "ca"  # other relative paths


def test_a_deploy_uses_the_ca_and_keys_the_cli_made_under_deepfleet_home(tmp_path, monkeypatch, wheelhouse,
                                                                        control_data):
    home = tmp_path / "home"
    monkeypatch.setenv("DEEPFLEET_HOME", str(home))
    ca, _ = init_ca(home / "pki")  # what `deepfleet pki init`, `keys create`, `model keys create` make there
    create_key(home / "api-keys.json", "home")
    create_model_keys(home / "model-keys")
    data = {key: value for key, value in control_data.items() if key not in STATE_SETTINGS}
    ops = plan(load_case("debian12-nogpu"), SITE_DEPLOY, data=data)
    assert find(ops, "Internal CA certificate").uploads() == {"/etc/deepfleet/tls/ca.crt": ca.cert.name}


def test_the_local_inventory_finds_the_demo_hosts_under_deepfleet_home(tmp_path, monkeypatch):
    import json
    import runpy

    monkeypatch.delenv("DEEPFLEET_HOSTS_FILE", raising=False)
    monkeypatch.setenv("DEEPFLEET_HOME", str(tmp_path))
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "inventory.json").write_text(json.dumps({"hosts": [["h9", {"ssh_port": 2209}]]}))
    assert runpy.run_path(str(PROJECT_ROOT / "inventories" / "local.py"))["local"] == [("h9", {"ssh_port": 2209})]
