"""The vllm engine: argv rendered from runtime.yaml, and a supervised child that is restarted.

vLLM itself is CUDA-only and cannot run here: the child is tests/runtime/engines/stand_in_vllm.py,
a small real server process started through the same supervisor with the rendered argv.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from deepfleet_runtime.config import (MemorySection, ModelSection, QuantizationSection, RuntimeConfig,
                                      SchedulerSection, VllmSection)
from deepfleet_runtime.engines.base import GenerationRequest, ModelLoadError, SamplingParams
from deepfleet_runtime.engines.vllm_engine import VllmEngine, render_vllm_argv, vllm_environment
from deepfleet_runtime.quantize import resolve_quantization
from tests.conftest import free_port

STAND_IN = Path(__file__).with_name("stand_in_vllm.py")


def _config(model_path, **vllm):
    return RuntimeConfig(ModelSection("deepseek-v3", Path(model_path)), engine="vllm", device="cuda:1",
                         dtype="bfloat16", quantization=QuantizationSection("int4", "awq"),
                         scheduler=SchedulerSection(max_batch_size=64, max_batch_tokens=8192),
                         memory=MemorySection(gpu_memory_fraction=0.85), vllm=VllmSection(**vllm))


def test_argv_and_environment_come_from_runtime_yaml():
    config = _config("/opt/deepfleet/models/v3@abc", tensor_parallel_size=4, pipeline_parallel_size=2,
                     max_model_len=16384, ray_address="10.0.0.1:6379", port=8111, extra_args=["--enforce-eager"])
    plan = resolve_quantization("vllm", "cuda", "int4", "awq")
    assert render_vllm_argv(config, plan) == [
        "vllm", "serve", "/opt/deepfleet/models/v3@abc", "--host", "127.0.0.1", "--port", "8111",
        "--served-model-name", "deepseek-v3", "--dtype", "bfloat16", "--tensor-parallel-size", "4",
        "--pipeline-parallel-size", "2", "--gpu-memory-utilization", "0.85", "--max-num-seqs", "64",
        "--max-num-batched-tokens", "8192", "--max-model-len", "16384", "--quantization", "awq",
        "--distributed-executor-backend", "ray", "--enforce-eager"]
    env = vllm_environment(config, base={"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
                   "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "CUDA_VISIBLE_DEVICES": "1",
                   "RAY_ADDRESS": "10.0.0.1:6379"}
    on_cluster_network = replace(config, vllm=replace(config.vllm, host_ip="10.0.0.1", network_interface="ens8"))
    assert {key: value for key, value in vllm_environment(on_cluster_network, base={}).items()
            if key in ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")} == {
        "VLLM_HOST_IP": "10.0.0.1", "NCCL_SOCKET_IFNAME": "ens8", "GLOO_SOCKET_IFNAME": "ens8"}
    single = replace(config, vllm=VllmSection(), quantization=QuantizationSection("none", "auto"))
    argv = render_vllm_argv(single, resolve_quantization("vllm", "cuda", "none"))
    assert "--quantization" not in argv and "--distributed-executor-backend" not in argv
    assert "--max-model-len" not in argv


@pytest.fixture()
def supervised(tmp_path, tiny_model_dir):
    executable = tmp_path / "vllm"
    executable.write_text(f"#!/bin/sh\nexec {sys.executable} {STAND_IN} \"$@\"\n")
    executable.chmod(0o755)
    record = tmp_path / "record.json"
    os.environ["STAND_IN_RECORD"] = str(record)
    config = _config(tiny_model_dir, executable=str(executable), port=free_port(), restart_backoff_s=0.5,
                     ready_timeout_s=30)
    engine = VllmEngine(config, resolve_quantization("vllm", "cuda", "int4", "awq"))
    engine.load()
    yield engine, record
    engine.close()
    del os.environ["STAND_IN_RECORD"]


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _generate(engine, count=3):
    async def main():
        request = GenerationRequest("v1", [5, 6, 7], SamplingParams(count, temperature=0))
        return [e async for e in engine.generate(request)]
    return asyncio.run(main())


def test_child_gets_the_rendered_argv_and_streams_through_the_engine(supervised):
    engine, record = supervised
    seen = json.loads(record.read_text())
    assert seen["argv"] == engine.argv[1:]
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "1" and seen["env"]["VLLM_NO_USAGE_STATS"] == "1"
    events = _generate(engine)
    assert "".join(e.text for e in events) == "t7.1 t7.2 t7.3 "
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 3


def test_a_crashed_child_is_restarted_and_readiness_follows_it(supervised):
    engine, record = supervised
    first_pid = engine.supervisor.pid
    with pytest.raises(httpx.HTTPError):  # the child exits mid-request
        httpx.post(f"{engine.base_url}/crash", timeout=5)
    assert _wait(lambda: not engine.ready), "readiness did not drop while the child was down"
    assert _wait(lambda: engine.ready), "the child was not restarted"
    assert engine.supervisor.restarts == 1 and engine.supervisor.last_exit_code == 3
    assert engine.supervisor.pid != first_pid
    assert json.loads(record.read_text())["pid"] == engine.supervisor.pid
    assert "".join(e.text for e in _generate(engine, 2)) == "t7.1 t7.2 "


def test_an_encrypted_release_is_decrypted_into_private_memory_for_the_child_and_wiped_at_close(
        tmp_path, store, tiny_model_dir, monkeypatch):
    executable = tmp_path / "vllm"
    executable.write_text(f"#!/bin/sh\nexec {sys.executable} {STAND_IN} \"$@\"\n")
    executable.chmod(0o755)
    record, memory = tmp_path / "record.json", Path(tempfile.mkdtemp(dir="/dev/shm"))
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(memory))  # as the unit's private tmpfs
    config = _config(store.release, executable=str(executable), port=free_port(), ready_timeout_s=30)
    config = replace(config, model=replace(config.model, keys_dir=store.root / "keys"))
    engine = VllmEngine(config, resolve_quantization("vllm", "cuda", "int4", "awq"))
    try:
        engine.load()
        served = Path(json.loads(record.read_text())["argv"][1])
        assert served.parent == memory and engine.argv[2] == str(served)
        assert (served / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
        assert "".join(e.text for e in _generate(engine, 2)) == "t7.1 t7.2 "
    finally:
        engine.close()
    assert list(memory.iterdir()) == []  # wiped
    memory.rmdir()


def test_an_encrypted_release_without_keys_is_refused_naming_the_setting(store):
    engine = VllmEngine(_config(store.release), resolve_quantization("vllm", "cuda", "int4", "awq"))
    with pytest.raises(ModelLoadError, match="set model.keys_dir in runtime.yaml"):
        engine.load()



def test_a_child_that_never_comes_up_leaves_no_decrypted_copy_behind(tmp_path, store, monkeypatch):
    executable = tmp_path / "vllm"
    executable.write_text("#!/bin/sh\nexit 1\n")
    executable.chmod(0o755)
    memory = Path(tempfile.mkdtemp(dir="/dev/shm"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(memory))
    config = _config(store.release, executable=str(executable), port=free_port(), ready_timeout_s=2,
                     restart_backoff_s=0.5)
    engine = VllmEngine(replace(config, model=replace(config.model, keys_dir=store.root / "keys")),
                        resolve_quantization("vllm", "cuda", "int4", "awq"))
    try:
        with pytest.raises(ModelLoadError, match="vllm did not come up"):
            engine.load()
        assert list(memory.iterdir()) == []
    finally:
        memory.rmdir()
