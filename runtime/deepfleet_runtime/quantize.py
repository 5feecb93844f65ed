"""Quantisation: which method serves a mode on an engine and device, and what the weights weigh.

`resolve_quantization` turns config (engine, device, mode, method) into one concrete method or
fails at start with a message that names the fix; it never imports torch, so the control side and
the vLLM engine use it too. The torch-side helpers (`apply_torchao`, `bitsandbytes_config`,
`tensor_bytes`, `weight_bytes`) are called by engines/loading.py and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engines.base import EngineConfigError

# fp8 kernels need Ada (8.9) or Hopper (9.0) and newer.
FP8_MIN_CAPABILITY = (8, 9)
# Expert weights are fused 3-D parameters, not nn.Linear: linear-only quantisers skip them.
EXPERT_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj")
# bitsandbytes 8-bit breaks MLA's kv_b_proj (it gets 4-D input); keep it and lm_head in full precision.
BNB_INT8_SKIP_MODULES = ["kv_b_proj", "lm_head"]


@dataclass(frozen=True)
class QuantizationPlan:
    mode: str  # none | bf16 | int8 | int4 | fp8
    method: str  # none | torchao | bitsandbytes | awq | gptq | fp8 | gguf

    @property
    def vllm_quantization(self) -> str | None:
        """The value of vllm serve --quantization, or None for unquantised weights."""
        return {"bitsandbytes": "bitsandbytes", "awq": "awq", "gptq": "gptq", "fp8": "fp8"}.get(self.method)


def resolve_quantization(engine: str, device: str, mode: str, method: str = "auto",
                         gpu_capability: tuple[int, int] | None = None) -> QuantizationPlan:
    """The concrete method for `mode` on `engine`/`device`, or EngineConfigError naming the fix.

    gpu_capability is the CUDA compute capability of the GPU (e.g. (8, 0) for an A100), when known.
    """
    on_gpu = device.startswith("cuda")
    if engine == "llamacpp":
        if method not in ("auto", "gguf") or mode not in ("none",):
            raise EngineConfigError(
                f"quantization {mode}/{method} does not apply to the llamacpp engine: the GGUF file's own "
                "type decides; set quantization.mode: none and convert with "
                "`deepfleet-runtime convert-gguf MODEL_DIR --type q8_0` (or q4_0, q2_k)")
        return QuantizationPlan("none", "gguf")
    if method == "gguf":
        raise EngineConfigError(f"quantization method gguf needs engine: llamacpp, not {engine}")
    if mode in ("none", "bf16"):
        if method != "auto":
            raise EngineConfigError(f"quantization method {method} needs a quantised mode (int8, int4, fp8); "
                                    f"set quantization.mode or method: auto")
        return QuantizationPlan(mode, "none")
    if mode == "fp8":
        if engine != "vllm" or not on_gpu:
            raise EngineConfigError("fp8 weights are served by the vllm engine on a GPU; use int8 "
                                    "(torchao) with the transformers engine instead")
        if gpu_capability is not None and tuple(gpu_capability) < FP8_MIN_CAPABILITY:
            major, minor = gpu_capability
            raise EngineConfigError(
                f"fp8 needs compute capability 8.9 or newer (Ada, Hopper); this GPU has {major}.{minor} "
                "(e.g. A100 = 8.0): use quantization.mode int8 (bitsandbytes) or int4 with an awq/gptq checkpoint")
        return QuantizationPlan("fp8", "fp8")
    if engine == "vllm":
        return _vllm_plan(mode, method)
    return _transformers_plan(mode, method, on_gpu)


def _vllm_plan(mode: str, method: str) -> QuantizationPlan:
    if method == "torchao":
        raise EngineConfigError("vllm serves torchao int8 checkpoints wrongly (it emits token 0); use "
                                "method bitsandbytes, or awq/gptq for int4")
    if mode == "int8":
        if method not in ("auto", "bitsandbytes"):
            raise EngineConfigError(f"int8 on vllm uses bitsandbytes, not {method}; set method: bitsandbytes")
        return QuantizationPlan("int8", "bitsandbytes")
    if method == "auto":
        raise EngineConfigError("int4 on vllm needs a pre-quantised checkpoint: set quantization.method to "
                                "awq or gptq (matching the model), or bitsandbytes to quantise at load")
    return QuantizationPlan("int4", method)


def _transformers_plan(mode: str, method: str, on_gpu: bool) -> QuantizationPlan:
    if method in ("awq", "gptq"):
        raise EngineConfigError(f"{method} checkpoints are served by the vllm engine; with transformers "
                                "use method torchao or bitsandbytes")
    if mode == "int8":
        return QuantizationPlan("int8", "torchao" if method == "auto" else method)
    # int4
    chosen = method if method != "auto" else ("torchao" if on_gpu else "bitsandbytes")
    if chosen == "torchao" and not on_gpu:
        raise EngineConfigError(
            "int4 through torchao needs a GPU (its CPU kernels are missing); on CPU use "
            "quantization.method: bitsandbytes (nf4), or the llamacpp engine with a q4_0 GGUF")
    return QuantizationPlan("int4", chosen)


def apply_torchao(model, mode: str, device=None) -> None:
    """Quantise `model` in place with torchao, expert weights included; with `device`, torchao moves
    each module there just before quantising it, so unquantised weights never fill the device.

    The model must be loaded with experts_implementation="eager" (so experts are plain 3-D
    parameters) and this must run under torch.no_grad().
    """
    from torchao.quantization import FqnToConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    # int4: the tile-packed layout runs on torch's own tinygemm CUDA kernel (no extra package)
    config = (Int8WeightOnlyConfig() if mode == "int8"
              else Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"))
    fqn_config = {f"re:.*{name.replace('.', '[.]')}": config for name in EXPERT_PARAMETERS}
    quantize_(model, FqnToConfig({**fqn_config, "_default": config}), filter_fn=None, device=device)


def bitsandbytes_config(mode: str):
    """transformers' BitsAndBytesConfig for int8 (MLA-safe skips) or int4 (nf4)."""
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=BNB_INT8_SKIP_MODULES)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False)


def tensor_bytes(tensor) -> int:
    """Storage bytes of a tensor, looking inside quantised tensor subclasses (data + scales)."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    total = tensor.numel() * tensor.element_size()
    scales = getattr(tensor, "SCB", None)  # bitsandbytes int8 row scales
    if scales is not None:
        total += scales.numel() * scales.element_size()
    state = getattr(tensor, "quant_state", None)  # bitsandbytes 4-bit absmax
    if state is not None and getattr(state, "absmax", None) is not None:
        total += state.absmax.numel() * state.absmax.element_size()
    return total


def weight_bytes(model, linear_and_experts_only: bool = False) -> int:
    """Bytes of the model's weights; with linear_and_experts_only, of nn.Linear and expert weights."""
    import torch

    seen, total = set(), 0
    for module_name, module in model.named_modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor is None or id(tensor) in seen:
                continue
            full = f"{module_name}.{name}"
            if linear_and_experts_only and not (isinstance(module, torch.nn.Linear)
                                                or full.endswith(EXPERT_PARAMETERS)):
                continue
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total
