"""A real test host that serves a GGUF model with `runtime_engine: llamacpp`, through the real roles:
the wheelhouse with the llamacpp extra (llama-cpp-python built from its sdist), the encrypted release
of a directory holding one .gguf file, the unit, and the gateway answering the openai SDK over TLS.
It runs on the shared `site` host and puts the site's own engine back afterwards (CI time: one host
for every module that needs one)."""

from __future__ import annotations

import time

import pytest

from deepfleet.paths import cache_dir
from deepfleet_runtime.gguf_convert import convert, llama_cpp_sources

pytestmark = pytest.mark.fleet
LLAMACPP = {"runtime_engine": "llamacpp", "runtime_wheel_extras": ["llamacpp"]}


def test_a_host_with_runtime_engine_llamacpp_answers_through_the_gateway(site, tiny_model_dir, tmp_path):
    source = tmp_path / "tiny-gguf"
    source.mkdir()
    convert(tiny_model_dir, source / "model.gguf", "q8_0", "gpt-2", llama_cpp_sources(cache_dir() / "llama.cpp"))
    inventory = site.with_overrides(tmp_path / "llamacpp.json", model_source=str(source), **LLAMACPP)
    try:
        started = time.monotonic()
        result = site.deploy(inventory)
        print(f"llamacpp deploy: {time.monotonic() - started:.1f} s")
        assert not result.failed_hosts, result.log[-3000:]
        assert 'engine: "llamacpp"' in site.on_host("cat /etc/deepfleet/runtime.yaml")
        site.on_host("/opt/deepfleet/venv/bin/python -c 'import llama_cpp'")  # the extra reached the host's venv
        with site.client() as client:
            answer = client.chat.completions.create(model=_model_name(site), max_tokens=8, temperature=0,
                                                    messages=[{"role": "user", "content": "Hello"}])
        assert answer.usage.completion_tokens > 0 and answer.choices[0].message.content is not None
        assert site.deploy(inventory).changed == 0  # and it converged
    finally:
        site.rollback()  # the site's own engine back, for the modules that share the host
    assert 'engine: "transformers"' in site.on_host("cat /etc/deepfleet/runtime.yaml")
    # the site's own runtime release is current again; the gateway's and tools' venv link is no part of
    # a runtime release (a rollback leaves it), and the deploy points it back to what the inventory asks
    again = site.deploy()
    assert sorted(again.changed_by_operation) == ["deepfleet runtime | Use the installed runtime venv"]


def _model_name(site) -> str:
    with site.client() as client:
        (model,) = client.models.list().data
    return model.id
