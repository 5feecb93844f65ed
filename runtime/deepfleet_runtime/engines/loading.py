"""Loading a model and its tokenizer: the ONE place an engine turns a model directory into objects
(and quantises them).

A plain model directory loads with `from_pretrained`. An encrypted release (deepfleet_runtime.
modelstore, docs/model-format.md) is opened with the host's keys and decrypted file by file:
the weights (*.safetensors) straight into memory, the few small files that transformers reads
only by path (config, tokenizer, generation config) into a private in-memory directory that is
wiped once loaded. Every file is authenticated and hash-checked before anything is built from it,
so a bad signature, a wrong key or a tampered chunk raises ModelLoadError naming the file, and
nothing is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..modelstore import KeyDirectory, ModelStoreError, Release, is_release
from ..modelstore.tmpfs import private_memory_dir
from ..quantize import QuantizationPlan, apply_torchao, bitsandbytes_config
from .base import ModelLoadError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
WEIGHT_SUFFIX = ".safetensors"


def load_model_and_tokenizer(model_dir: Path, dtype: str = "float32", device: str = "cpu",
                             quantization: QuantizationPlan = QuantizationPlan("none", "none"),
                             keys_dir: Path | None = None):
    """(model, tokenizer) from a plain model directory or an encrypted release, on `device`, in eval
    mode, quantised per `quantization`. ModelLoadError names the directory or file and the cause."""
    import torch

    model_dir = Path(model_dir)
    if quantization.mode == "bf16":
        dtype = "bfloat16"
    kwargs = {"dtype": "auto" if dtype == "auto" else getattr(torch, dtype)}
    if quantization.method == "torchao":
        kwargs["experts_implementation"] = "eager"  # experts as plain 3-D parameters torchao can reach
    elif quantization.method == "bitsandbytes":
        kwargs["quantization_config"] = bitsandbytes_config(quantization.mode)
        if device.startswith("cuda"):  # bitsandbytes places the weights itself (needs accelerate)
            kwargs["device_map"] = {"": device}
    try:
        if is_release(model_dir):
            model, tokenizer = _load_release(model_dir.resolve(), kwargs, keys_dir)
        else:
            model, tokenizer = _load_plain(model_dir, kwargs)
    except ImportError as exc:
        raise ModelLoadError(f"quantization {quantization.method} needs a package that is not installed "
                             f"({exc}); install deepfleet-runtime[quantization]") from exc
    if quantization.method == "torchao":  # quantised module by module on the device, then moved whole
        try:
            with torch.no_grad():
                apply_torchao(model, quantization.mode, torch.device(device))
        except ImportError as exc:
            raise ModelLoadError(f"quantization torchao needs torchao ({exc}); install "
                                 "deepfleet-runtime[quantization]") from exc
    if quantization.method != "bitsandbytes" or not device.startswith("cuda"):
        model = model.to(torch.device(device))
    if quantization.method == "bitsandbytes":
        _warn_unquantised_experts(model)
    return model.eval(), tokenizer


def _warn_unquantised_experts(model) -> None:
    """bitsandbytes quantises nn.Linear only: fused 3-D MoE expert weights keep their dtype. Say so,
    with their share of the weights (about 97% in a real DeepSeek-V3)."""
    experts = [p for name, p in model.named_parameters()
               if ".experts." in name and p.dim() == 3 and p.dtype.is_floating_point]
    if not experts:
        return
    expert_bytes = sum(p.numel() * p.element_size() for p in experts)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    log.warning("bitsandbytes left the MoE expert weights unquantised (%d tensors, %.0f%% of the weight "
                "bytes, in %s); quantise them with quantization.method: torchao (int8), or serve a "
                "pre-quantised checkpoint with the vllm engine", len(experts), 100 * expert_bytes / total,
                experts[0].dtype)


def _load_plain(model_dir: Path, kwargs: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir} holds no config.json; point model.path in runtime.yaml "
                             "at a transformers model directory or an encrypted release")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model from {model_dir}: {exc}") from exc
    return model, tokenizer


def _load_release(release_dir: Path, kwargs: dict, keys_dir: Path | None):
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoTokenizer, GenerationConfig

    if keys_dir is None:
        raise ModelLoadError(f"{release_dir} is an encrypted release; set model.keys_dir in runtime.yaml "
                             "to the directory with the fleet's model keys")
    try:
        release = Release.open(release_dir, KeyDirectory(keys_dir))
        files = release.manifest.files
        weights = [entry for entry in files if entry.path.endswith(WEIGHT_SUFFIX)]
        if not weights:
            raise ModelLoadError(f"{release_dir}: the release has no {WEIGHT_SUFFIX} weights; encrypted "
                                 "releases are loaded from safetensors files")
        with private_memory_dir() as scratch:
            for entry in files:
                if entry not in weights:
                    target = scratch / entry.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(release.read_file(entry.path))
            state_dict = {}
            for entry in weights:
                state_dict.update(tensors_from_safetensors(release.read_file(entry.path), entry.path))
            config = AutoConfig.from_pretrained(scratch)
            tokenizer = AutoTokenizer.from_pretrained(scratch)
            generation = (GenerationConfig.from_pretrained(scratch)
                          if (scratch / "generation_config.json").is_file() else None)
    except ModelStoreError as exc:
        raise ModelLoadError(f"refusing to load {release_dir}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model from {release_dir}: {exc}") from exc
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(f"{release_dir}: transformers has no causal LM for model type {config.model_type!r}")
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # the Auto class cannot load from a state dict
    model = model_class.from_pretrained(None, config=config, state_dict=state_dict, **kwargs)
    if generation is not None:
        model.generation_config = generation
    log.info("decrypted %s (%d files, %d bytes) into memory", release.manifest.release_name, len(files),
             sum(entry.size for entry in files))
    return model, tokenizer


# safetensors dtype names -> torch dtype names (https://github.com/huggingface/safetensors, format)
_SAFETENSORS_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
                       "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "F64": "float64",
                       "I64": "int64", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def tensors_from_safetensors(buffer: bytearray, where: str) -> dict:
    """The tensors of a safetensors file held in `buffer`, as views of it (no copy): decrypted
    weights are never duplicated in memory on their way into the model."""
    import json
    import struct

    import torch

    (header_size,) = struct.unpack_from("<Q", buffer)
    try:
        header = json.loads(bytes(buffer[8:8 + header_size]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelLoadError(f"{where} is not a safetensors file") from None
    start = 8 + header_size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        tensor = (torch.frombuffer(buffer, dtype=dtype, count=count, offset=start + begin) if count
                  else torch.empty(0, dtype=dtype))
        tensors[name] = tensor.reshape(info["shape"])
    return tensors
