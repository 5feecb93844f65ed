"""Every inventory under inventories/ works as shipped: each of its hosts plans the site deploy
against the recorded facts of its OS and GPUs, and the runtime.yaml and gateway.yaml it would
upload load with the runtime's own loaders (the ones `serve` and `gateway` run on the host).

Only the control side's inputs are small stand-ins (conftest.py): the model directory, the CA, the
keys, the wheelhouse. The air-gapped hospital is planned online here (its bundle path is
tests/roles/test_bundle.py); every setting of its group data is still in force.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepfleet.paths import PROJECT_ROOT, SITE_DEPLOY
from deepfleet_runtime.config import load_runtime_config
from deepfleet_runtime.gateway.config import load_gateway_config

from tests.runtime.test_planner import DEEPSEEK_V3

from .factplan import load_case, plan

INVENTORIES = PROJECT_ROOT / "inventories"
GATEWAY = "debian12-nogpu"
# inventory: {host: the fixture case of its OS and GPUs}
HOSTS = {
    "dual_a100": {"a100-1": "ubuntu2204-2xa100"},
    "edge": {"edge-1": "debian12-arm64-edge"},
    "fleet": {"gw1": GATEWAY, "gw2": GATEWAY, **{f"gpu{n}": "ubuntu2204-2xa100" for n in range(1, 5)}},
    "hospital": {"gpu-1": "debian12-2xl40s", "gpu-2": "debian12-2xl40s", "gateway-1": GATEWAY},
    "local": {"h1": "debian12-nogpu"},
    "multinode": {"llm-gw": GATEWAY, "h100-a": "rocky9-8xh100", "h100-b": "rocky9-8xh100"},
    "rtx4090": {"rtx4090-1": "ubuntu2404-rtx4090"},
}
LOADERS = {"/etc/deepfleet/runtime.yaml": load_runtime_config, "/etc/deepfleet/gateway.yaml": load_gateway_config}


def test_every_inventory_is_covered():
    assert sorted(HOSTS) == sorted(path.stem for path in INVENTORIES.glob("*.py"))


@pytest.fixture
def local_hosts_file(tmp_path, monkeypatch):
    """The hosts file `deepfleet demo` writes for inventories/local.py."""
    hosts_file = tmp_path / "inventory.json"
    hosts_file.write_text(json.dumps({"hosts": [["h1", {"ssh_hostname": "127.0.0.1", "ssh_port": 2201}]]}))
    monkeypatch.setenv("DEEPFLEET_HOSTS_FILE", str(hosts_file))


@pytest.fixture
def v3_shaped_model(tmp_path) -> Path:
    """A model directory with DeepSeek-V3's config.json (the planner sizes multinode.py's cluster from it)."""
    model = tmp_path / "v3-shaped"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "deepseek_v3", **DEEPSEEK_V3}))
    (model / "model.safetensors").write_text("weights")
    return model


@pytest.mark.parametrize("inventory", sorted(HOSTS))
def test_each_example_plans_on_every_host_and_its_configs_load(inventory, wheelhouse, control_data, local_hosts_file,
                                                               gguf_model, v3_shaped_model, tmp_path):
    data = dict(control_data, bundle_dir=None)
    data["model_source"] = str({"edge": gguf_model, "multinode": v3_shaped_model}.get(inventory, data["model_source"]))
    rendered = {}
    for host_name, case in HOSTS[inventory].items():
        ops = plan(load_case(case), SITE_DEPLOY, data=data, inventory=INVENTORIES / f"{inventory}.py",
                   host_name=host_name)
        configs = {dest: text for op in ops for dest, text in op.uploads().items() if dest in LOADERS}
        for dest, text in configs.items():
            path = tmp_path / f"{host_name}-{Path(dest).name}"
            path.write_text(text)
            LOADERS[dest](path)  # raises ConfigError naming the key, as on the host
        # A Ray worker serves through its head and faces no client; every other host renders a config.
        assert configs or (inventory, host_name) == ("multinode", "h100-b"), f"{host_name} renders no config"
        rendered.update(configs)
    assert sorted(rendered) == sorted(LOADERS)
