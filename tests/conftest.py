"""Fixtures shared by all tests: the tiny model, free ports, servers in threads."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from deepfleet.demo import MODEL_NAME, ensure_tiny_model
from deepfleet.paths import cache_dir


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny random-weight DeepSeek-V3 model (built once, cached with the project's caches)."""
    return ensure_tiny_model(cache_dir() / "models" / MODEL_NAME, log=lambda _: None)


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
