"""A real runtime server (tiny model, transformers engine) on a loopback port, shared by the module."""

from __future__ import annotations

import pytest

from deepfleet_runtime.config import LimitsSection
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from deepfleet_runtime.server import create_app
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port

LIMITS = LimitsSection(max_prompt_tokens=256, max_tokens=64, default_max_tokens=16)


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    engine = TransformersEngine("tiny", tiny_model_dir)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def runtime_url(engine):
    port = free_port()
    app = create_app(engine, LIMITS, load_in_background=False)
    with ServerThread(build_server(app, "127.0.0.1", port)):
        yield f"http://127.0.0.1:{port}"
