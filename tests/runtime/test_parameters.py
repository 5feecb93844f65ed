"""No silent ignoring: parameters the engine does not implement are refused by name; penalties,
logprobs and min_p are implemented and checked against the model's own logits."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

MESSAGES = [{"role": "user", "content": "Hello, fleet."}]


@pytest.fixture(scope="module")
def client(runtime_url):
    return openai.OpenAI(base_url=f"{runtime_url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
@pytest.mark.parametrize("field, value", [
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "auto"),
    ("logit_bias", {"5": 10}),
    ("repetition_penalty", 1.2),
])
def test_unimplemented_parameters_are_refused_by_name(runtime_url, route, field, value):
    body = {"model": "tiny", "max_tokens": 4, field: value,
            **({"messages": MESSAGES} if route.startswith("chat") else {"prompt": "Hello"})}
    response = httpx.post(f"{runtime_url}/v1/{route}", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    assert f"'{field}' is not supported by the transformers engine" in error["message"]
    assert "engine: vllm" in error["message"]


def test_parameters_at_their_defaults_are_accepted(runtime_url):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "tools": [], "logit_bias": {},
            "response_format": {"type": "text"}, "presence_penalty": 0, "logprobs": False, "user": "x"}
    assert httpx.post(f"{runtime_url}/v1/chat/completions", json=body, timeout=30).status_code == 200


def _reference_greedy(engine, ids, count, presence=0.0, frequency=0.0):
    """Greedy decoding with OpenAI's additive penalties, by full forwards of the HF model."""
    tokens = list(ids)
    counts = torch.zeros(engine.model.config.vocab_size)
    with torch.no_grad():
        for _ in range(count):
            logits = engine.model(torch.tensor([tokens])).logits[0, -1].float()
            logits = logits - frequency * counts - presence * (counts > 0).float()
            token = int(torch.argmax(logits))
            counts[token] += 1
            tokens.append(token)
    return tokens[len(ids):]


@pytest.mark.parametrize("presence, frequency", [(0.0, 1.5), (1.5, 0.0), (-0.5, 0.8)])
def test_presence_and_frequency_penalties_follow_openais_formula(client, engine, presence, frequency):
    ids = engine.encode_text("The fleet")
    response = client.completions.create(model="tiny", prompt="The fleet", max_tokens=16, temperature=0,
                                         presence_penalty=presence, frequency_penalty=frequency,
                                         logprobs=0, extra_body={"ignore_eos": True})
    expected = _reference_greedy(engine, ids, 16, presence, frequency)
    assert expected != _reference_greedy(engine, ids, 16)  # the penalty changes the output
    assert response.choices[0].text == engine.tokenizer.decode(expected, skip_special_tokens=True)
    assert len(response.choices[0].logprobs.tokens) == 16


def _model_logprobs(engine, prompt_ids, output_ids):
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt_ids + output_ids])).logits[0].float()
    return torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)


def test_chat_logprobs_are_the_models_streamed_and_not(client, engine):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 8
    prompt = engine.encode_chat(MESSAGES)
    reference = _model_logprobs(engine, prompt, _greedy_ids(engine, prompt, 8))
    for row, item in zip(reference, content):
        top = torch.topk(row, 3)
        assert [t.logprob for t in item.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-3)
        assert item.logprob == pytest.approx(float(top.values[0]), abs=1e-3)  # greedy takes the top token
        assert item.top_logprobs[0].token == item.token
        assert bytes(item.bytes).decode(errors="replace") == item.token
    assert "".join(c.token for c in content) == whole.choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [c for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content]
    assert [(c.token, round(c.logprob, 4)) for c in streamed] == [(c.token, round(c.logprob, 4)) for c in content]


def _greedy_ids(engine, prompt, count):
    with torch.no_grad():
        out = engine.model.generate(torch.tensor([prompt]), max_new_tokens=count, do_sample=False,
                                    eos_token_id=None, pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, len(prompt):].tolist()


def test_completion_logprobs_have_openais_legacy_shape(client, engine):
    response = client.completions.create(model="tiny", prompt="The fleet", max_tokens=5, temperature=0,
                                         logprobs=2, extra_body={"ignore_eos": True})
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert all(len(top) == 2 and token in top for token, top in zip(logprobs.tokens, logprobs.top_logprobs))
    assert logprobs.text_offset[0] == 0 and "".join(logprobs.tokens) == response.choices[0].text


@pytest.mark.parametrize("body, fragment", [
    ({"top_logprobs": 3}, "top_logprobs needs logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"min_p": 1.5}, "min_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
])
def test_bad_values_of_implemented_parameters_are_400(runtime_url, body, fragment):
    response = httpx.post(f"{runtime_url}/v1/chat/completions",
                          json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2, **body}, timeout=30)
    assert response.status_code == 400 and fragment in response.json()["error"]["message"]


def test_min_p_of_one_keeps_only_the_most_likely_token(client):
    def ask(**extra):
        return client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, **extra
                                              ).choices[0].message.content
    assert ask(temperature=1.5, seed=3, extra_body={"min_p": 1.0}) == ask(temperature=0)
    assert ask(temperature=1.5, seed=3) != ask(temperature=0)


@pytest.mark.parametrize("depth", [100_000, 900, 40])
@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_deeply_nested_json_is_a_400(runtime_url, route, depth):
    body = b'{"model": "tiny", "prompt": "x", "messages": [], "metadata": ' + b"[" * depth + b"]" * depth + b"}"
    response = httpx.post(f"{runtime_url}/v1/{route}", content=body,
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400
    assert "nested" in response.json()["error"]["message"]
