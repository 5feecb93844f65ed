"""The OpenAI-compatible server, exercised with the real openai SDK against the tiny model."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="module")
def client(runtime_url):
    return openai.OpenAI(base_url=f"{runtime_url}/v1", api_key="unused", max_retries=0)


MESSAGES = [{"role": "user", "content": "Hello, fleet."}]


def test_chat_completion_has_text_and_usage(client):
    response = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("length", "stop")
    assert response.usage.completion_tokens <= 8
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streamed_chat_equals_the_unstreamed_one(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_stream_ends_with_done(runtime_url):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{runtime_url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"


def test_greedy_output_equals_transformers_generate(client, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=20, do_sample=False)
    expected = tokenizer.decode(output[0, len(prompt_ids):], skip_special_tokens=True)
    ours = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, temperature=0)
    assert ours.choices[0].message.content == expected


def test_seeded_sampling_is_reproducible(client):
    def sample():
        return client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10,
                                              temperature=1.0, top_p=0.9, seed=1234).choices[0].message.content
    assert sample() == sample()


def test_stop_string_ends_the_completion(client):
    free = client.completions.create(model="tiny", prompt="The fleet", max_tokens=16, temperature=0)
    text = free.choices[0].text
    assert len(text) > 3
    stop = text[2:4]
    stopped = client.completions.create(model="tiny", prompt="The fleet", max_tokens=16, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_health_and_ready(runtime_url):
    assert httpx.get(f"{runtime_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{runtime_url}/ready").json()["status"] == "ready"


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "tiny"}, 400, "messages"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": 65}, 400, "max_tokens"),
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "messages": MESSAGES, "temperature": 3}, 400, "temperature"),
    ({"model": "tiny", "messages": MESSAGES, "n": 2}, 400, "n"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]}, 400, "limit is 256"),
    ({"model": "other", "messages": MESSAGES}, 404, "does not exist"),
])
def test_bad_requests_get_openai_errors(runtime_url, body, status, fragment):
    response = httpx.post(f"{runtime_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]


def test_invalid_json_is_a_400(runtime_url):
    response = httpx.post(f"{runtime_url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_metrics_count_requests_tokens_and_latency(client, runtime_url):
    def sample(text, name):
        lines = [l for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{")]
        return sum(float(l.rsplit(" ", 1)[1]) for l in lines)

    before = httpx.get(f"{runtime_url}/metrics").text
    client.completions.create(model="tiny", prompt="Count me", max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    httpx.post(f"{runtime_url}/v1/completions", json={"model": "nope", "prompt": "x"})
    after = httpx.get(f"{runtime_url}/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert sample(text, "deepfleet_generation_tokens_total") - sample(before, "deepfleet_generation_tokens_total") == 5
    assert 'deepfleet_requests_total{route="completions",status="404"}' in text
    assert sample(text, "deepfleet_time_to_first_token_seconds_count") > sample(
        before, "deepfleet_time_to_first_token_seconds_count")
    assert sample(text, "deepfleet_inter_token_latency_seconds_count") - sample(
        before, "deepfleet_inter_token_latency_seconds_count") == 4
    assert sample(text, "deepfleet_kv_cache_capacity_tokens") > 0
    assert sample(text, "deepfleet_model_weight_bytes") == 18_649_312
    assert "deepfleet_gpu_" not in text  # no GPU here: no NVML series


def test_a_request_beyond_the_kv_cache_is_a_400(tiny_model_dir):
    from deepfleet_runtime.config import SchedulerSection
    from deepfleet_runtime.engines.transformers_engine import TransformersEngine
    from deepfleet_runtime.server import create_app
    from deepfleet_runtime.serving import build_server
    from tests.conftest import ServerThread, free_port
    from tests.runtime.conftest import LIMITS

    small = TransformersEngine("tiny", tiny_model_dir, scheduler=SchedulerSection(kv_cache_tokens=48))
    port = free_port()
    with ServerThread(build_server(create_app(small, LIMITS, load_in_background=False), "127.0.0.1", port)):
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 60, "stream": True}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)
    small.close()
    assert response.status_code == 400
    assert "raise scheduler.kv_cache_tokens" in response.json()["error"]["message"]


def test_ready_reports_release_and_quantization_for_gateways(tmp_path):
    from types import SimpleNamespace

    from deepfleet_runtime.commands.serve import serving_labels

    release = tmp_path / "tiny@0123abcd"
    release.mkdir()
    (tmp_path / "tiny@current").symlink_to(release.name)
    config = SimpleNamespace(model=SimpleNamespace(path=tmp_path / "tiny@current"),
                             quantization=SimpleNamespace(mode="int8"))
    assert serving_labels(config) == {"release": "0123abcd", "quantization": "int8"}
    config.model.path = tmp_path / "plain"
    assert serving_labels(config)["release"] == ""
