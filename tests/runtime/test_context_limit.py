"""Prompt + max_tokens beyond the model's context is a 400 context_length_exceeded, before any work."""

from __future__ import annotations

import httpx
import pytest

from deepfleet_runtime.config import LimitsSection
from deepfleet_runtime.server import create_app
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port
from tests.runtime.scripted_engine import ScriptedEngine


@pytest.fixture()
def small_context(real_tokenizer):
    engine = ScriptedEngine("r1", real_tokenizer, [real_tokenizer.eos_token_id], context_tokens=64)
    port = free_port()
    limits = LimitsSection(max_prompt_tokens=1000, max_tokens=1000, default_max_tokens=16)
    with ServerThread(build_server(create_app(engine, limits, load_in_background=False), "127.0.0.1", port)):
        yield engine, f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("route, body", [
    ("chat/completions", {"messages": [{"role": "user", "content": "word " * 40}], "max_tokens": 30}),
    ("completions", {"prompt": "word " * 40, "max_tokens": 30}),
    ("completions", {"prompt": "word " * 70}),  # the default max_tokens counts too
])
def test_prompt_plus_max_tokens_beyond_the_context_is_refused(small_context, route, body):
    engine, url = small_context
    response = httpx.post(f"{url}/{route}", json={"model": "r1", **body}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "context window of 64 tokens" in error["message"] and "lower max_tokens" in error["message"]
    assert engine.submitted == []  # refused before any work


def test_within_the_context_is_served(small_context):
    engine, url = small_context
    response = httpx.post(f"{url}/completions", json={"model": "r1", "prompt": "word " * 10, "max_tokens": 20})
    assert response.status_code == 200 and len(engine.submitted) == 1


def test_the_transformers_engine_reports_the_models_context(engine):
    assert engine.context_tokens == engine.model.config.max_position_embeddings == 4096
