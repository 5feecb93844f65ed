"""Failures as clients see them: a failed request is an OpenAI error (JSON, or an SSE error event
in a stream), a client that goes away frees its row, shutdown ends open streams with an error, a
broken device makes /ready false and `serve` exit non-zero (systemd restarts it)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch

from deepfleet_runtime.config import LimitsSection, SchedulerSection
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from deepfleet_runtime.server import create_app
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port

LONG = LimitsSection(max_prompt_tokens=256, max_tokens=3000, default_max_tokens=16)
MESSAGES = [{"role": "user", "content": "Hello"}]
NAN = {"temperature": 1e-45}  # overflows the scaled logits: NaN probabilities


@pytest.fixture()
def served(tiny_model_dir):
    engine = TransformersEngine("tiny", tiny_model_dir, scheduler=SchedulerSection(max_batch_size=4))
    port = free_port()
    with ServerThread(build_server(create_app(engine, LONG, load_in_background=False), "127.0.0.1", port)):
        yield engine, f"http://127.0.0.1:{port}"
    engine.close()


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_failed_request_is_an_openai_server_error(served):
    _, url = served
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, **NAN},
                          timeout=30)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "probability tensor" in error["message"]


def _sse_lines(response):
    return [line for line in response.iter_lines() if line]


def test_a_stream_that_fails_at_its_first_token_is_still_an_http_error(served):
    _, url = served
    body = {"model": "tiny", "messages": MESSAGES, "stream": True, **NAN}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        response.read()
    assert response.status_code == 500 and "probability tensor" in response.json()["error"]["message"]


GONE = {"model": "tiny", "prompt": "Gone", "max_tokens": 3000, "temperature": 0, "ignore_eos": True}


def test_a_client_that_goes_away_frees_its_row(served):
    engine, url = served
    with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting for the whole answer
        httpx.post(f"{url}/v1/completions", json=GONE, timeout=1.0)
    # 3,000 tokens take far longer than the wait below: only a cancellation frees the row in time
    assert _wait(lambda: engine.stats().running == 0, 10), "the row was not freed"


def test_a_streaming_client_that_goes_away_frees_its_row(served):
    engine, url = served
    with httpx.stream("POST", f"{url}/v1/completions", json={**GONE, "stream": True}, timeout=30) as response:
        for count, _ in enumerate(response.iter_lines()):
            if count == 3:
                break
    assert _wait(lambda: engine.stats().running == 0, 10), "the row was not freed"


def test_shutdown_ends_open_streams_with_an_error_event(served):
    engine, url = served
    body = {"model": "tiny", "prompt": "Shut", "max_tokens": 3000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    lines = []

    def read():
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            lines.extend(_sse_lines(response))

    reader = threading.Thread(target=read)
    reader.start()
    assert _wait(lambda: engine.stats().running == 1)
    engine.close()
    reader.join(30)
    assert not reader.is_alive()
    errors = [json.loads(line[6:]) for line in lines if line.startswith("data: {") and '"error"' in line]
    assert errors and "shutting down" in errors[0]["error"]["message"]
    assert lines[-1] == "data: [DONE]"


def test_a_broken_device_makes_ready_false(served, monkeypatch):
    engine, url = served
    assert httpx.get(f"{url}/ready").status_code == 200

    def broken(*args, **kwargs):
        raise torch.AcceleratorError("CUDA error: device-side assert triggered")
    monkeypatch.setattr(engine.model, "forward", broken)
    response = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2},
                          timeout=30)
    assert response.status_code == 503 and "device-side assert" in response.json()["error"]["message"]
    ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert "device-side assert" in ready.json()["detail"]


def test_serve_exits_non_zero_when_the_device_fails(tiny_model_dir, tmp_path, monkeypatch):
    """systemd's Restart=on-failure restarts the unit only on a non-zero exit."""
    from types import SimpleNamespace

    from deepfleet_runtime.commands import serve

    port = free_port()
    config = tmp_path / "runtime.yaml"
    config.write_text(f"model:\n  name: tiny\n  path: {tiny_model_dir}\nserver:\n  port: {port}\n")
    loaded = threading.Event()
    original_load = TransformersEngine.load

    def load_then_break(self):
        original_load(self)

        def broken(*args, **kwargs):
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        self.model.forward = broken
        loaded.set()
    monkeypatch.setattr(TransformersEngine, "load", load_then_break)

    def poke():
        loaded.wait(60)
        _wait(lambda: _answers(port))
        httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=30)
    threading.Thread(target=poke, daemon=True).start()
    assert serve.run(SimpleNamespace(config=config)) == 1


def _answers(port) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
