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
