"""The gateway in front of a real runtime: the openai SDK over TLS 1.3, keys, route allowlist,
metrics on loopback, client disconnects."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import httpx
import openai
import pytest

from .conftest import audit_records

MESSAGES = [{"role": "user", "content": "hi"}]


def _records(site) -> list[dict]:
    return audit_records(site)


def _record(site, request_id: str) -> dict:
    """A request's fields from its "started" and end records together."""
    merged = {}
    for record in _records(site):
        if record.get("request_id") == request_id:
            merged.update(record)
    return merged


def test_chat_through_the_gateway_streamed_and_not(gateway):
    with gateway.openai() as client:
        whole = client.chat.completions.with_raw_response.create(model="tiny", messages=MESSAGES, max_tokens=8,
                                                                 temperature=0)
        text = whole.parse().choices[0].message.content
        assert text
        streamed = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                                  stream=True)
        chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    # The gateway asked the runtime for usage (to settle the key's tokens) but the client did not:
    assert all(c.usage is None for c in chunks)
    record = _record(gateway, whole.headers["x-request-id"])
    assert record["key_id"] == "tester" and record["status"] == 200 and record["model"] == "tiny"
    assert record["prompt"] == MESSAGES and record["completion"] == text
    assert record["completion_tokens"] == whole.parse().usage.completion_tokens
    assert record["params"] == {"max_tokens": 8, "temperature": 0}


def test_completions_and_models_through_the_gateway(gateway):
    with gateway.openai() as client:
        assert [m.id for m in client.models.list()] == ["tiny"]
        completion = client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, temperature=0)
        assert completion.choices[0].text
        streamed = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text
    assert streamed[-1].usage.completion_tokens == completion.usage.completion_tokens


def test_sha256_audit_policy_keeps_no_text(gateway):
    with gateway.openai("hashed") as client:
        response = client.chat.completions.with_raw_response.create(model="tiny", messages=MESSAGES, max_tokens=4)
    record = _record(gateway, response.headers["x-request-id"])
    assert "prompt" not in record and "completion" not in record
    assert len(record["prompt_sha256"]) == 64 and len(record["completion_sha256"]) == 64
    assert "hi" not in json.dumps(record["params"])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer dfk-wrong"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer"}])
def test_missing_or_wrong_key_is_401(gateway, headers):
    response = httpx.get(f"{gateway.url}/v1/models", headers=headers, verify=gateway.tls())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    record = _record(gateway, response.headers["x-request-id"])
    assert (record["status"], record["key_id"]) == (401, None)


def test_wrong_key_through_the_sdk_is_authentication_error(gateway):
    with gateway.openai(key="dfk-not-a-key") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_key_limited_to_other_models_is_refused(gateway):
    with gateway.openai("other-model") as client, pytest.raises(openai.PermissionDeniedError, match="another-model"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    with gateway.openai("tiny-only") as client:
        assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).choices


@pytest.mark.parametrize("depth", [100_000, 900])
def test_deeply_nested_json_is_a_400_through_the_gateway(gateway, depth):
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + (
        b"[" * depth + b"]" * depth + b"}")
    with gateway.http() as client:
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]


def test_unknown_routes_are_404(gateway):
    with gateway.http() as client:
        for path in ("/admin", "/v1/embeddings", "/metrics", "/", "/upstreams", "/v1/chat/completions/x"):
            assert client.get(path).status_code == 404, path


def test_metrics_are_on_a_separate_loopback_listener(gateway):
    config = gateway.gateway.config.metrics
    text = httpx.get(f"http://{config.host}:{config.port}/metrics").text
    assert 'deepfleet_gateway_requests_total{route="/v1/chat/completions",status="200",key="tester"}' in text
    assert 'deepfleet_gateway_upstream_healthy{replica="r1"} 1' in text


def test_tls12_only_client_is_refused(gateway):
    context = gateway.tls()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(sock, server_hostname="localhost")


def test_tls13_is_negotiated(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        with gateway.tls().wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"


def test_new_and_revoked_keys_apply_without_restart_or_dropping_streams(gateway):
    from deepfleet.apikeys import revoke_key

    second = gateway.add_key("second")
    with gateway.openai(key=second) as client:
        assert client.models.list().data
        stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=32, temperature=0,
                                                stream=True)
        first_chunk = next(iter(stream))
        revoke_key(gateway.keyring, "second")
        gateway.publish_keys()
        rest = list(stream)  # admitted before the revocation: it finishes
        assert first_chunk.choices[0].delta.role == "assistant"
        assert rest[-1].choices[0].finish_reason in ("length", "stop")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    with gateway.openai() as client:
        assert client.models.list().data


def test_health_needs_no_key_and_ready_follows_upstreams(gateway):
    with gateway.http(key_name=None) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"status": "ready", "replicas_serving": 1, "replicas": 1}


def test_client_disconnect_cancels_the_upstream_request(gateway):
    replica = gateway.gateway.pool.replicas["r1"]
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 64, "stream": True, "temperature": 0}
    with gateway.http() as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            request_id = response.headers["x-request-id"]
            next(response.iter_raw())
    # The connection is gone; the gateway notices, cancels the upstream request and records it.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(r.get("request_id") == request_id and r["type"] == "request"
                                                  for r in _records(gateway)):  # its end record
        time.sleep(0.05)
    record = _record(gateway, request_id)
    assert record["status"] == 499
    assert record["completion_tokens"] is None
    assert replica.outstanding == 0


def test_many_concurrent_requests_all_answered(gateway):
    errors, answers = [], []

    def ask():
        try:
            with gateway.openai() as client:
                answers.append(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(answers) == 8
