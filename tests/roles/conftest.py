"""Fixtures for planning roles against recorded facts: the control side's inputs, kept small.

The runtime role builds a wheelhouse for the host on the control machine while planning. For
fixture plans that would download the real dependencies (for a GPU host: gigabytes of CUDA
wheels) only to list file names, so `wheelhouse` injects a small prebuilt one at the one seam
the role uses (roles.runtime.build_wheelhouse) and records which platforms, accelerators (the
constraints file) and extras it was asked for: the plan tests assert those. The real builder is
tested in tests/test_wheelhouse.py and used by every fleet deploy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pytest

from deepfleet.apikeys import create_key
from deepfleet.modelkeys import create_model_keys
from deepfleet.pki import init_ca
from deepfleet.wheelhouse import MANIFEST, Wheelhouse


@dataclass
class SmallWheelhouse:
    requests: list[dict] = field(default_factory=list)  # each build_wheelhouse call: target + extras

    def build(self, target, cache_dir, runtime_src, extras=("transformers",), log=None) -> Wheelhouse:
        self.requests.append({"python": target.python, "machine": target.machine, "glibc": target.glibc,
                              "accelerator": target.accelerator, "extras": list(extras)})
        tag = f"cp{target.python.replace('.', '')}-{target.machine}-{'-'.join(extras) or 'base'}"
        deps = cache_dir / f"deps-{tag}"
        deps.mkdir(parents=True, exist_ok=True)
        manifest = {}
        for name in ("starlette-1.10.0-py3-none-any.whl", f"engine_deps-{tag}.whl"):
            (deps / name).write_text(name)
            manifest[name] = hashlib.sha256(name.encode()).hexdigest()
        (deps / MANIFEST).write_text(json.dumps(manifest))
        wheel = cache_dir / "runtime" / "deepfleet_runtime-0.1.0-py3-none-any.whl"
        wheel.parent.mkdir(parents=True, exist_ok=True)
        wheel.write_text("runtime wheel")
        return Wheelhouse(deps, hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:16], wheel,
                          "r" * 16, "deepfleet-runtime")


@pytest.fixture
def wheelhouse(monkeypatch):
    small = SmallWheelhouse()
    monkeypatch.setattr("roles.runtime.build_wheelhouse", small.build)
    return small


@pytest.fixture
def control_data(tmp_path):
    """Host data pointing the control-side paths (model, CA, API keys, caches) at small local ones."""
    model = tmp_path / "model"
    model.mkdir()
    for name, content in (("config.json", '{"model_type": "deepseek_v3"}'), ("model.safetensors", "weights"),
                          ("tokenizer.json", "{}")):
        (model / name).write_text(content)
    init_ca(tmp_path / "pki")
    create_key(tmp_path / "keys.json", "plan-tests")
    create_model_keys(tmp_path / "model-keys")
    return {"model_source": str(model), "deepfleet_cache_dir": str(tmp_path / "cache"),
            "gateway_pki_dir": str(tmp_path / "pki"), "gateway_api_keyring": str(tmp_path / "keys.json"),
            "model_keys_dir": str(tmp_path / "model-keys")}


@pytest.fixture
def gguf_model(tmp_path):
    """A model directory as llama.cpp users have one: a single .gguf file, no config.json."""
    model = tmp_path / "gguf-model"
    model.mkdir()
    (model / "model-q4_0.gguf").write_bytes(b"GGUF" + bytes(60))
    return model
