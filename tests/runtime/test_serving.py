"""Serving ASGI apps: TLS shutdown does not wait on idle keep-alive clients."""

from __future__ import annotations

import ssl
import threading
import time

import httpx
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
