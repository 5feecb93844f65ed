"""Running ASGI apps with uvicorn: plain HTTP on loopback, HTTPS with TLS 1.3 only (optionally
requiring client certificates), and side listeners (unix socket, loopback) in the same process.

Graceful shutdown and TLS: asyncio waits up to 30 s (ssl_shutdown_timeout) for a peer to answer
a closing connection's close_notify, and an idle keep-alive client never does, so uvicorn's
shutdown would hang that long per idle connection. Once a connection has sent its close_notify
during shutdown, it is aborted after TLS_CLOSE_GRACE_S instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import json
import ssl
from collections.abc import Collection
from pathlib import Path

import uvicorn

TLS_CLOSE_GRACE_S = 1.0
GRACEFUL_SHUTDOWN_S = 30  # in-flight requests (a long stream) get this long to finish


def build_server(app, host: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None,
                 client_ca: Path | None = None, allowed_clients: Collection[str] = ()) -> uvicorn.Server:
    """A uvicorn server for `app`; with a certificate, only TLS 1.3 handshakes succeed, and with
    `client_ca` only clients presenting a certificate from that CA (mutual TLS). With
    `allowed_clients`, only those certificates' common names get past: every request from any
    other certificate of the CA is answered 403."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        ssl_ca_certs=str(client_ca) if client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
        config.http_protocol_class = _prompt_tls_close(config.http_protocol_class)
        if client_ca and allowed_clients:
            config.http_protocol_class = _admit_only(config.http_protocol_class, frozenset(allowed_clients))
    return uvicorn.Server(config)


class SideServer(uvicorn.Server):
    """A listener next to a main server (admin socket, metrics): no lifespan, no signal handlers of
    its own; it stops when the main server has stopped."""

    def __init__(self, app, sock: socket.socket):
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        super().__init__(config)
        self.sock = sock

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super().serve(sockets=sockets or [self.sock])

    def capture_signals(self):
        return contextlib.nullcontext()


def unix_listener(path: Path, mode: int = 0o600) -> socket.socket:
    """A listening unix socket at `path` (replacing a stale one), with `mode` set before listen."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never briefly world-accessible
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(64)
    return sock


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def serve_with_side_servers(main: uvicorn.Server, side: list[SideServer]) -> None:
    """Run `main` (which owns SIGTERM/SIGINT) and the side servers in one event loop; the side
    servers stop after the main one has finished its graceful shutdown."""

    async def run_all() -> None:
        tasks = [asyncio.create_task(server.serve()) for server in side]
        try:
            await main.serve()
        finally:
            for server in side:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)

    with asyncio.Runner(loop_factory=main.config.get_loop_factory()) as runner:
        runner.run(run_all())


def _prompt_tls_close(protocol_class: type) -> type:
    """`protocol_class` whose connections, once closing during shutdown, are aborted after a grace."""

    class PromptTlsClose(protocol_class):
        def shutdown(self) -> None:
            super().shutdown()
            self._abort_once_closing()

        def _abort_once_closing(self) -> None:
            if self.transport.is_closing():  # our close_notify is out; do not wait for the peer's
                self.loop.call_later(TLS_CLOSE_GRACE_S, self.transport.abort)
            else:  # a response is still being sent; look again shortly
                self.loop.call_later(0.1, self._abort_once_closing)

    return PromptTlsClose


def _admit_only(protocol_class: type, names: frozenset[str]) -> type:
    """`protocol_class` whose connections from a client certificate whose common name is not in
    `names` get a 403 for every request (the handshake has completed when a connection is made)."""

    class AdmitOnly(protocol_class):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            common_name = _common_name(transport.get_extra_info("peercert") or {})
            if common_name not in names:
                self.app = _refusal(common_name, names)

    return AdmitOnly


def _common_name(peercert: dict) -> str:
    return next((value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"), "")


def _refusal(common_name: str, names: frozenset[str]):
    body = json.dumps({"error": {"type": "forbidden", "message": (
        f"this runtime serves only the fleet's gateways ({', '.join(sorted(names))}); the client "
        f"certificate of {common_name or 'an unnamed client'} is not one of them: send requests "
        "through a gateway")}}).encode()

    async def refuse(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return refuse
