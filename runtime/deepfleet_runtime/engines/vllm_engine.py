"""The vLLM engine (production GPUs): a supervised `vllm serve` child on loopback behind our server.

Our server stays the only thing exposed: it renders the chat template, checks limits and splits
reasoning as for every engine, then streams a completion for the prompt token ids from the child
(127.0.0.1 only). The child's argv comes from runtime.yaml (render_vllm_argv); it is restarted when
it crashes, and /ready answers 200 only while it is up.

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
import threading
from pathlib import Path
from typing import AsyncIterator

import httpx

from ..config import RuntimeConfig
from ..modelstore import ModelStoreError, is_release
from ..modelstore.tmpfs import decrypted_copy
from ..quantize import QuantizationPlan
from .base import EngineStats, GenerationRequest, ModelLoadError, TokenEvent
from .hf_tokens import chat_prompt_ids, text_prompt_ids, think_token_ids
from .supervisor import ChildSupervisor

log = logging.getLogger(__name__)


def render_vllm_argv(config: RuntimeConfig, plan: QuantizationPlan, model_dir: Path | None = None) -> list[str]:
    """The `vllm serve` command line for runtime.yaml (`model_dir`: where the model's files are, when
    not at model.path: a decrypted copy)."""
    settings, scheduler = config.vllm, config.scheduler
    dtype = "bfloat16" if plan.mode == "bf16" else config.dtype
    argv = [_executable(settings.executable), "serve", str(model_dir or config.model.path),
            "--host", "127.0.0.1", "--port", str(settings.port),
            "--served-model-name", config.model.name,
            "--dtype", dtype,
            "--tensor-parallel-size", str(settings.tensor_parallel_size),
            "--pipeline-parallel-size", str(settings.pipeline_parallel_size),
            "--gpu-memory-utilization", str(config.memory.gpu_memory_fraction),
            "--max-num-seqs", str(scheduler.max_batch_size),
            "--max-num-batched-tokens", str(scheduler.max_batch_tokens)]
    if settings.max_model_len:
        argv += ["--max-model-len", str(settings.max_model_len)]
    if plan.vllm_quantization:
        argv += ["--quantization", plan.vllm_quantization]
    if settings.ray_address:
        argv += ["--distributed-executor-backend", "ray"]
    return argv + list(settings.extra_args)


def _executable(name: str) -> str:
    """`vllm` from our own venv when it is there (systemd's PATH does not hold the venv), else as given."""
    beside = Path(sys.executable).parent / name
    return str(beside) if "/" not in name and beside.is_file() else name


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


class VllmEngine:
    """Streams completions from a supervised vllm child."""

    def __init__(self, config: RuntimeConfig, plan: QuantizationPlan):
        self.model_name = config.model.name
        self.config = config
        self.plan = plan
        self.argv = render_vllm_argv(config, plan)
        self.base_url = f"http://127.0.0.1:{config.vllm.port}"
        self.supervisor = ChildSupervisor(self.argv, f"{self.base_url}/health", vllm_environment(config),
                                          config.vllm.restart_backoff_s, config.vllm.ready_timeout_s, "vllm")
        self._tokenizer = None
        self._client: httpx.AsyncClient | None = None
        self._in_flight: dict[str, object] = {}
        self._lock = threading.Lock()
        self._decrypted = contextlib.ExitStack()  # the decrypted copy of an encrypted release, while running

    @property
    def ready(self) -> bool:
        return self._tokenizer is not None and self.supervisor.up

    @property
    def reasoning_token_ids(self) -> tuple[int, int] | None:
        return think_token_ids(self._tokenizer)

    def load(self) -> None:
        """Read the tokenizer, start the child and wait until it answers."""
        from transformers import AutoTokenizer

        path = Path(self.config.model.path)
        if is_release(path):
            try:
                path = self._decrypted.enter_context(decrypted_copy(path, self.config.model.keys_dir))
            except ModelStoreError as exc:
                raise ModelLoadError(f"refusing to load {self.config.model.path}: {exc}") from None
            self.argv = self.supervisor.argv = render_vllm_argv(self.config, self.plan, path)
        try:
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot read the tokenizer in {path}: {exc}") from exc
            self.supervisor.start()
            if not self.supervisor.wait_up(self.config.vllm.ready_timeout_s):
                raise ModelLoadError(f"vllm did not come up on {self.base_url} within "
                                     f"{self.config.vllm.ready_timeout_s:.0f} s; its output is in this service's log (journalctl -u "
                                     f"deepfleet-runtime, or docker logs deepfleet-runtime) above: {' '.join(self.argv)}")
        except ModelLoadError:
            self.close()  # no child left running, no decrypted copy left in memory
            raise
        log.info("vllm serves %s on %s", self.model_name, self.base_url)

    def close(self) -> None:
        self.supervisor.stop()
        self._decrypted.close()

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return chat_prompt_ids(self._tokenizer, messages)

    def encode_text(self, text: str) -> list[int]:
        return text_prompt_ids(self._tokenizer, text)

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._in_flight))

    def cancel(self, request_id: str) -> None:
        with self._lock:
            stream = self._in_flight.get(request_id)
        if stream is not None:
            stream.cancelled = True

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(None, connect=5.0))
        state = _StreamState()
        with self._lock:
            self._in_flight[request.request_id] = state
        try:
            async with self._client.stream("POST", "/v1/completions", json=self._body(request)) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    raise RuntimeError(f"vllm answered {response.status_code}: {detail}")
                async for event in _events(response):
                    if state.cancelled:
                        yield TokenEvent("", [], "cancelled", event.completion_tokens)
                        return
                    yield event
                    if event.finish_reason:
                        return
        finally:
            with self._lock:
                self._in_flight.pop(request.request_id, None)

    def _body(self, request: GenerationRequest) -> dict:
        params = request.sampling
        body = {"model": self.model_name, "prompt": request.prompt_token_ids, "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k or -1,
                "stop": list(params.stop), "ignore_eos": params.ignore_eos, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        if params.seed is not None:
            body["seed"] = params.seed
        return body


class _StreamState:
    cancelled = False


async def _events(response: httpx.Response) -> AsyncIterator[TokenEvent]:
    """TokenEvents from vLLM's completion SSE stream (usage on every chunk gives the token count)."""
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: "):])
        usage = chunk.get("usage") or {}
        for choice in chunk.get("choices", []):
            yield TokenEvent(choice.get("text") or "", [], choice.get("finish_reason"),
                             usage.get("completion_tokens", 0))
