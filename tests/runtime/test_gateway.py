"""The gateway in front of a real runtime: TLS 1.3 only, API keys, route allowlist, streaming."""

from __future__ import annotations

import json
import socket
import ssl

import httpx
import openai
import pytest

from deepfleet.apikeys import create_key, host_key_file, load_keyring
from deepfleet.pki import ensure_server_cert, init_ca
from deepfleet_runtime.gateway.app import create_gateway_app
from deepfleet_runtime.gateway.config import GatewayConfig, ListenSection, TlsSection, UpstreamSection
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, runtime_url):
    root = tmp_path_factory.mktemp("gateway")
    ca, _ = init_ca(root / "pki")
    pair, _ = ensure_server_cert(root / "pki", "gw", ["localhost", "127.0.0.1"])
    keyring = root / "keyring.json"
    key = create_key(keyring, "tester")
    keys_file = root / "api_keys.json"
    keys_file.write_text(host_key_file(load_keyring(keyring)))
    port = free_port()
    config = GatewayConfig(tls=TlsSection(pair.cert, pair.key), api_keys_file=keys_file,
                           listen=ListenSection("127.0.0.1", port), upstream=UpstreamSection(url=runtime_url))
    with ServerThread(build_server(create_gateway_app(config), "127.0.0.1", port, pair.cert, pair.key)):
        yield {"url": f"https://127.0.0.1:{port}", "ca": str(ca.cert), "key": key, "keyring": keyring,
               "keys_file": keys_file, "port": port}


def _client(gateway, key):
    # Clients are closed after use: an idle TLS connection would hold the server's shutdown.
    return openai.OpenAI(base_url=f"{gateway['url']}/v1", api_key=key, max_retries=0,
                         http_client=openai.DefaultHttpxClient(verify=_tls(gateway)))


def _tls(gateway):
    return ssl.create_default_context(cafile=gateway["ca"])


def test_chat_through_the_gateway_streamed_and_not(gateway):
    with _client(gateway, gateway["key"]) as client:
        _chat_both_ways(client)


def _chat_both_ways(client):
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=8, temperature=0)
    assert whole.choices[0].message.content
    streamed = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == whole.choices[0].message.content


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer dfk-wrong"}, {"Authorization": "Basic abc"}])
def test_missing_or_wrong_key_is_401(gateway, headers):
    response = httpx.get(f"{gateway['url']}/v1/models", headers=headers, verify=_tls(gateway))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_wrong_key_through_the_sdk_is_authentication_error(gateway):
    with _client(gateway, "dfk-not-a-key") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_unknown_routes_are_404(gateway):
    for path in ("/admin", "/v1/embeddings", "/metrics", "/"):
        response = httpx.get(f"{gateway['url']}{path}", verify=_tls(gateway),
                             headers={"Authorization": f"Bearer {gateway['key']}"})
        assert response.status_code == 404, path


def test_tls12_only_client_is_refused(gateway):
    context = ssl.create_default_context(cafile=gateway["ca"])
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", gateway["port"]), timeout=10) as sock:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(sock, server_hostname="localhost")


def test_tls13_is_negotiated(gateway):
    context = ssl.create_default_context(cafile=gateway["ca"])
    with socket.create_connection(("127.0.0.1", gateway["port"]), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"


def test_new_and_revoked_keys_apply_without_restart(gateway):
    second = create_key(gateway["keyring"], "second")
    gateway["keys_file"].write_text(host_key_file(load_keyring(gateway["keyring"])))
    with _client(gateway, second) as client:
        assert client.models.list().data
        remaining = [r for r in load_keyring(gateway["keyring"]) if r["id"] != "second"]
        gateway["keys_file"].write_text(json.dumps({"keys": remaining}))
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    with _client(gateway, gateway["key"]) as client:
        assert client.models.list().data


def test_health_needs_no_key_and_ready_follows_upstream(gateway):
    assert httpx.get(f"{gateway['url']}/health", verify=_tls(gateway)).json() == {"status": "ok"}
    assert httpx.get(f"{gateway['url']}/ready", verify=_tls(gateway)).json()["status"] == "ready"
