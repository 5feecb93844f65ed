"""The control side's gateway client and `deepfleet chat`, against a real gateway and runtime."""

from __future__ import annotations

import json
import time

import pytest

from deepfleet.cli import main as deepfleet_cli
from deepfleet.client import GatewayClient, GatewayError, retry_after_seconds
from tests.conftest import free_port
from tests.runtime.conftest import engine, runtime_url  # noqa: F401 - fixtures used below
from tests.runtime.gateway.conftest import gateway_pki, running_gateway, write_gateway  # noqa: F401


@pytest.fixture(scope="module")
def site(tmp_path_factory, gateway_pki, runtime_url):  # noqa: F811
    site = write_gateway(tmp_path_factory.mktemp("client"), gateway_pki, [{"name": "r1", "url": runtime_url}],
                         {"tester": {}, "one-per-second": {"rpm": 60, "tpm": 0}})
    with running_gateway(site):
        yield site


def _connection(site, tmp_path, key_name="tester"):
    path = tmp_path / "connection.json"
    path.write_text(json.dumps({"base_url": f"{site.url}/v1", "ca_cert": str(site.pki.ca),
                                "api_key": site.keys[key_name], "model": "tiny"}))
    return path


def test_chat_streamed_and_not(site, tmp_path):
    with GatewayClient.from_connection(_connection(site, tmp_path)) as client:
        whole = client.chat("Hello", max_tokens=6, temperature=0)
        assert whole and "".join(client.chat_stream("Hello", max_tokens=6, temperature=0)) == whole


def test_429_is_retried_after_the_time_the_gateway_names(site, tmp_path):
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        time.sleep(seconds)

    with GatewayClient.from_connection(_connection(site, tmp_path, "one-per-second"), sleep=sleep) as client:
        answers = [client.chat("Hi", max_tokens=2) for _ in range(3)]  # 60/min: a burst of 60, then 1 a second
        while not waits:
            answers.append(client.chat("Hi", max_tokens=2))
    # Every call returned an answer (a random-weight model may answer with an empty string).
    assert all(isinstance(answer, str) for answer in answers) and set(waits) == {1.0}


def test_unreachable_gateway_backs_off_exponentially_then_gives_up(tmp_path):
    waits = []
    client = GatewayClient(f"https://127.0.0.1:{free_port()}/v1", "dfk-x", model="m", max_retries=4,
                           backoff_base_s=0.5, sleep=waits.append)
    with client, pytest.raises(GatewayError, match="gave up after 5 attempts; last: cannot reach"):
        client.chat("hi")
    assert len(waits) == 4
    assert all(0 <= wait <= 0.5 * 2 ** attempt for attempt, wait in enumerate(waits))


def test_client_errors_are_not_retried(site, tmp_path):
    waits = []
    with GatewayClient(f"{site.url}/v1", "dfk-wrong", site.pki.ca, "tiny", sleep=waits.append) as client:
        with pytest.raises(GatewayError, match="HTTP 401"):
            client.chat("hi")
    assert waits == []


def test_retry_after_forms():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert 0 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_deepfleet_chat_command(site, tmp_path, capsys, monkeypatch):
    # A random-weight model may well answer in whitespace: compare with the same greedy request made
    # directly, rather than asking for non-blank text.
    with GatewayClient.from_connection(_connection(site, tmp_path)) as client:
        greedy = client.chat("Hello", max_tokens=4, temperature=0)
    assert deepfleet_cli(["chat", "Hello", "--connection", str(_connection(site, tmp_path)), "--max-tokens", "4",
                          "--temperature", "0"]) == 0
    assert capsys.readouterr().out == greedy + "\n"
    monkeypatch.delenv("DEEPFLEET_API_KEY", raising=False)
    assert deepfleet_cli(["chat", "Hello", "--base-url", f"{site.url}/v1"]) == 2
    assert "DEEPFLEET_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("DEEPFLEET_API_KEY", site.keys["tester"])
    assert deepfleet_cli(["chat", "Hello", "--base-url", f"{site.url}/v1", "--ca-cert", str(site.pki.ca),
                          "--stream", "--max-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == greedy + "\n"


def test_with_several_gateways_an_unreachable_one_is_left_at_once_for_the_next(site, tmp_path):
    waits = []
    dead = f"https://127.0.0.1:{free_port()}/v1"
    with GatewayClient([dead, f"{site.url}/v1"], site.keys["tester"], site.pki.ca, "tiny",
                       sleep=waits.append) as client:
        assert isinstance(client.chat("Hi", max_tokens=2), str)
        assert "".join(client.chat_stream("Hi", max_tokens=2)) is not None
        assert client.base_url == f"{site.url}/v1"  # it stays with the one that answered
    assert waits == []  # failing over needs no backoff; only a round of all gateways failing does


def test_a_connection_file_may_name_several_gateways_and_all_down_backs_off_per_round(tmp_path):
    path = tmp_path / "connection.json"
    urls = [f"https://127.0.0.1:{free_port()}/v1", f"https://127.0.0.1:{free_port()}/v1"]
    path.write_text(json.dumps({"base_urls": urls, "api_key": "dfk-x", "model": "m"}))
    waits = []
    with GatewayClient.from_connection(path, max_retries=2, sleep=waits.append) as client:
        with pytest.raises(GatewayError, match="gave up after 3 rounds of 2 gateways; last: cannot reach"):
            client.chat("hi")
    assert len(waits) == 2
