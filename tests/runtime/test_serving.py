"""Serving ASGI apps: TLS shutdown does not wait on idle keep-alive clients."""

from __future__ import annotations

import ssl
import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from deepfleet.pki import ensure_server_cert, init_ca
from deepfleet_runtime.serving import GRACEFUL_SHUTDOWN_S, build_server
from tests.conftest import free_port


def test_shutdown_does_not_wait_for_idle_tls_keepalive_clients(tmp_path):
    """asyncio would wait 30 s (ssl_shutdown_timeout) for an idle client's close_notify."""
    ca, _ = init_ca(tmp_path / "pki")
    pair, _ = ensure_server_cert(tmp_path / "pki", "h", ["127.0.0.1"])

    async def hello(_):
        return JSONResponse({"ok": True})

    port = free_port()
    server = build_server(Starlette(routes=[Route("/", hello)]), "127.0.0.1", port, pair.cert, pair.key)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca.cert))) as idle_client:
        assert idle_client.get(f"https://127.0.0.1:{port}/").status_code == 200  # now idle, kept alive
        server.should_exit = True
        thread.join(timeout=GRACEFUL_SHUTDOWN_S / 3)
        assert not thread.is_alive()


def _serve_in_thread(server):
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return thread


def test_a_runtime_for_other_hosts_gateways_admits_only_clients_with_a_certificate_from_the_ca(tmp_path):
    """What the runtime's `tls` section turns on: TLS 1.3 and mutual TLS against the fleet's CA."""
    from argparse import Namespace

    from deepfleet.pki import ensure_client_cert
    from deepfleet_runtime.commands import wait_ready

    ca, _ = init_ca(tmp_path / "pki")
    pair, _ = ensure_server_cert(tmp_path / "pki", "gpu2", ["127.0.0.1"])
    client, _ = ensure_client_cert(tmp_path / "pki", "gateway1")
    init_ca(tmp_path / "other")
    stranger, _ = ensure_client_cert(tmp_path / "other", "gateway1")

    async def ready(_):
        return JSONResponse({"status": "ready"})

    port = free_port()
    server = build_server(Starlette(routes=[Route("/ready", ready)]), "127.0.0.1", port, pair.cert, pair.key,
                          client_ca=ca.cert)
    thread = _serve_in_thread(server)
    url = f"https://127.0.0.1:{port}/ready"
    try:
        trusted = ssl.create_default_context(cafile=str(ca.cert))
        with pytest.raises(httpx.HTTPError):  # no client certificate
            httpx.get(url, verify=trusted)
        foreign = ssl.create_default_context(cafile=str(ca.cert))
        foreign.load_cert_chain(str(stranger.cert), str(stranger.key))
        with pytest.raises(httpx.HTTPError):  # a certificate from another CA
            httpx.get(url, verify=foreign)
        trusted.load_cert_chain(str(client.cert), str(client.key))
        assert httpx.get(url, verify=trusted).status_code == 200
        args = Namespace(url=url, timeout=10.0, cafile=ca.cert, cert=client.cert, key=client.key)
        assert wait_ready.run(args) == 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_wait_ready_stops_at_once_when_the_model_failed_to_load(tmp_path, capsys):
    from argparse import Namespace

    from deepfleet_runtime.commands import wait_ready

    async def ready(_):
        return JSONResponse({"status": "failed", "detail": "size mismatch for embed_tokens"}, 503)

    port = free_port()
    server = build_server(Starlette(routes=[Route("/ready", ready)]), "127.0.0.1", port)
    thread = _serve_in_thread(server)
    try:
        started = time.monotonic()
        args = Namespace(url=f"http://127.0.0.1:{port}/ready", timeout=60.0, cafile=None, cert=None, key=None)
        assert wait_ready.run(args) == 1
        assert time.monotonic() - started < 10
        assert "will not become ready" in capsys.readouterr().err
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_runtime_admits_only_the_gateways_certificates_not_another_gpu_nodes(tmp_path):
    """Every GPU node holds a client certificate from the fleet's CA; only gateways (and the
    node's own readiness check) may use the runtime, else a node bypasses keys and audit."""
    from deepfleet.pki import ensure_client_cert

    ca, _ = init_ca(tmp_path / "pki")
    pair, _ = ensure_server_cert(tmp_path / "pki", "gpu2", ["127.0.0.1"])

    async def completion(_):
        return JSONResponse({"choices": []})

    port = free_port()
    server = build_server(Starlette(routes=[Route("/v1/completions", completion, methods=["POST"])]), "127.0.0.1",
                          port, pair.cert, pair.key, client_ca=ca.cert, allowed_clients={"gw1", "gpu2"})
    thread = _serve_in_thread(server)
    url = f"https://127.0.0.1:{port}/v1/completions"

    def post_as(name: str) -> httpx.Response:
        client, _ = ensure_client_cert(tmp_path / "pki", name)
        context = ssl.create_default_context(cafile=str(ca.cert))
        context.load_cert_chain(str(client.cert), str(client.key))
        return httpx.post(url, json={}, verify=context)

    try:
        assert post_as("gw1").status_code == 200
        assert post_as("gpu2").status_code == 200  # its own readiness check
        refused = post_as("gpu3")
        assert refused.status_code == 403
        assert "gpu3" in refused.json()["error"]["message"] and "gw1" in refused.json()["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
