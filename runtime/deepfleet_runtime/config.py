"""The runtime's config file (/etc/deepfleet/runtime.yaml, rendered from templates/runtime.yaml.j2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .configfile import load_yaml_config


@dataclass(frozen=True)
class ModelSection:
    name: str  # the name clients pass as "model"
    path: Path  # a model directory (config.json, weights, tokenizer) or an encrypted release
    keys_dir: Path | None = None  # model keys (KEKs, verify key) for an encrypted release


@dataclass(frozen=True)
class ServerSection:
    host: str = "127.0.0.1"  # the engine listens on loopback only; the gateway faces clients
    port: int = 8000


@dataclass(frozen=True)
class LimitsSection:
    max_prompt_tokens: int = 4096  # longer prompts get 400
    max_tokens: int = 1024  # upper bound a request may ask for
    default_max_tokens: int = 256  # used when a request does not say


@dataclass(frozen=True)
class RuntimeConfig:
    model: ModelSection
    engine: Literal["transformers"] = "transformers"
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    server: ServerSection = field(default_factory=ServerSection)
    limits: LimitsSection = field(default_factory=LimitsSection)


def load_runtime_config(path: str | Path) -> RuntimeConfig:
    """Load and validate runtime.yaml."""
    return load_yaml_config(RuntimeConfig, path)
