"""Loading a transformers model directory: the ONE place weights are read (and quantised).

Engines that read weights through transformers call load_model_and_tokenizer(); a future change
that reads weights from somewhere else (e.g. decrypted into memory) hooks in here only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..quantize import QuantizationPlan, apply_torchao, bitsandbytes_config
from .base import ModelLoadError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model_and_tokenizer(model_dir: Path, dtype: str, device: str, quantization: QuantizationPlan):
    """(model, tokenizer) from a transformers directory, on `device`, quantised per `quantization`.

    The model is in eval mode. ModelLoadError names the directory and the cause.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir} holds no config.json; point model.path in runtime.yaml "
                             "at a transformers model directory")
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
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model from {model_dir}: {exc}") from exc
    except ImportError as exc:
        raise ModelLoadError(f"quantization {quantization.method} needs a package that is not installed "
                             f"({exc}); install deepfleet-runtime[quantization]") from exc
    if quantization.method != "bitsandbytes" or not device.startswith("cuda"):
        model = model.to(torch.device(device))
    if quantization.method == "torchao":
        try:
            with torch.no_grad():
                apply_torchao(model, quantization.mode)
        except ImportError as exc:
            raise ModelLoadError(f"quantization torchao needs torchao ({exc}); install "
                                 "deepfleet-runtime[quantization]") from exc
    return model.eval(), tokenizer
