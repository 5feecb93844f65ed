"""The runtime's config file (/etc/deepfleet/runtime.yaml, rendered from templates/runtime.yaml.j2).

One file configures every engine: the common sections (model, server, limits, quantization,
scheduler, memory) apply to all, and `vllm` / `llamacpp` hold what only that engine reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .configfile import load_yaml_config

EngineName = Literal["transformers", "vllm", "llamacpp"]
QuantizationMode = Literal["none", "bf16", "int8", "int4", "fp8"]
QuantizationMethod = Literal["auto", "torchao", "bitsandbytes", "awq", "gptq", "gguf"]


@dataclass(frozen=True)
class ModelSection:
    name: str  # the name clients pass as "model"
    path: Path  # a transformers directory (config.json, weights, tokenizer), an encrypted release,
    #             or a .gguf file for llamacpp
    keys_dir: Path | None = None  # model keys (KEKs, verify key) for an encrypted release


@dataclass(frozen=True)
class ServerSection:
    host: str = "127.0.0.1"  # loopback, unless gateways on other hosts reach it (then with `tls`)
    port: int = 8000


@dataclass(frozen=True)
class TlsSection:
    """TLS 1.3 on the runtime's port, for gateways on other hosts (mutual TLS with client_ca)."""

    cert: Path
    key: Path
    client_ca: Path | None = None  # only clients with a certificate from this CA (the gateways)
    # With client_ca: the certificate common names admitted (the fleet's gateways and this host's own
    # readiness check); any other certificate of the CA gets 403. Empty: any certificate of the CA.
    allowed_clients: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsSection:
    max_prompt_tokens: int = 4096  # longer prompts get 400
    max_tokens: int = 1024  # upper bound a request may ask for
    default_max_tokens: int = 256  # used when a request does not say


@dataclass(frozen=True)
class QuantizationSection:
    mode: QuantizationMode = "none"  # none | bf16 | int8 | int4 | fp8
    method: QuantizationMethod = "auto"  # auto picks per engine and device (see quantize.py)


@dataclass(frozen=True)
class SchedulerSection:
    max_batch_size: int = 32  # requests decoded together in one step
    max_batch_tokens: int = 4096  # tokens one step feeds the model: decode tokens + prompt chunks
    kv_cache_tokens: int = 0  # KV cache tokens (slots x columns allocated); 0 = derive from memory


@dataclass(frozen=True)
class MemorySection:
    gpu_memory_fraction: float = 0.9  # share of GPU memory for weights + KV cache
    pytorch_cuda_alloc_conf: str = "expandable_segments:True"  # PYTORCH_CUDA_ALLOC_CONF
    cpu_kv_cache_bytes: int = 2 * 1024**3  # KV budget on CPU when kv_cache_tokens is 0


@dataclass(frozen=True)
class VllmSection:
    python: str = ""  # the interpreter whose venv holds vllm; "" = the runtime's own (the host's venv)
    port: int = 8100  # the child listens on 127.0.0.1 only; clients never see it
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int = 0  # 0 = what the runtime accepts: limits.max_prompt_tokens + limits.max_tokens,
    #                         capped by the model's own context (planner.vllm_max_model_len)
    tool_call_parser: str = ""  # vLLM's --tool-call-parser ("deepseek_v3"), with --enable-auto-tool-choice
    ray_address: str = ""  # "host:6379" for a multi-node Ray cluster; empty = single node
    host_ip: str = ""  # multi-node: this host's address on the cluster network (VLLM_HOST_IP)
    network_interface: str = ""  # multi-node: that network's NIC for NCCL and Gloo (e.g. "ens8")
    extra_args: list[str] = field(default_factory=list)
    restart_backoff_s: float = 2.0  # first wait before restarting a crashed child (doubles, max 60 s)
    ready_timeout_s: float = 1800.0  # how long a start may take before it counts as failed
    liveness_interval_s: float = 30.0  # a one-token generation this often; 0 = never (only /health)
    liveness_timeout_s: float = 60.0  # a probe slower than this fails; two failures in a row restart the child


@dataclass(frozen=True)
class LlamaCppSection:
    n_ctx: int = 4096  # context window of the one llama.cpp sequence
    n_threads: int = 0  # 0 = llama-cpp-python's default (half the cores: its threads spin-wait)
    n_batch: int = 512  # prompt tokens per llama_decode call


# NVIDIA's XID catalogue: errors after which the GPU needs a reset or service (48 double-bit ECC,
# 61/62 internal micro-controller halt, 64 ECC page retirement or row remapping failure, 74 NVLink,
# 79 fallen off the bus, 95 uncontained ECC, 119/120 GSP, 140 unrecovered ECC). Application faults
# (13, 31, 43, 45) are not: the process that caused them gets the error, the GPU stays good.
DEFAULT_FATAL_XIDS = (48, 61, 62, 64, 74, 79, 95, 119, 120, 140)


@dataclass(frozen=True)
class GpuHealthSection:
    """Which GPU conditions take the replica out of service (/ready 503; gateways stop routing)."""

    enabled: bool = True
    fatal_xids: list[int] = field(default_factory=lambda: list(DEFAULT_FATAL_XIDS))
    max_uncorrected_ecc_errors: int = 0  # more volatile uncorrected (double-bit) errors than this: out
    retired_pages_pending: bool = True  # out while a page retirement awaits a GPU reset (pre-Ampere)
    remapping_pending: bool = True  # out while a row remapping awaits a GPU reset (Ampere and newer)
    remapping_failure: bool = True  # out once row remapping failed
    throttle_reasons: list[str] = field(default_factory=list)  # e.g. ["hw_slowdown"]: these take it out too
    max_temperature_celsius: int = 0  # 0: temperature alone never takes it out (alerts still fire)
    check_interval_s: float = 5.0


@dataclass(frozen=True)
class RuntimeConfig:
    model: ModelSection
    engine: EngineName = "transformers"
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    reasoning_parser: Literal["none", "deepseek_r1"] = "none"  # split <think>…</think> into reasoning_content
    server: ServerSection = field(default_factory=ServerSection)
    tls: TlsSection | None = None  # None: plain HTTP (on loopback, for a gateway on the same host)
    limits: LimitsSection = field(default_factory=LimitsSection)
    quantization: QuantizationSection = field(default_factory=QuantizationSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    memory: MemorySection = field(default_factory=MemorySection)
    vllm: VllmSection = field(default_factory=VllmSection)
    llamacpp: LlamaCppSection = field(default_factory=LlamaCppSection)
    gpu_health: GpuHealthSection = field(default_factory=GpuHealthSection)


def load_runtime_config(path: str | Path) -> RuntimeConfig:
    """Load and validate runtime.yaml."""
    return load_yaml_config(RuntimeConfig, path)
