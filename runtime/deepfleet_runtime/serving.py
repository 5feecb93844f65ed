"""Running ASGI apps with uvicorn: plain HTTP on loopback, or HTTPS with TLS 1.3 only."""

from __future__ import annotations

import ssl
from pathlib import Path

import uvicorn


def build_server(app, host: str, port: int, tls_cert: Path | None = None,
                 tls_key: Path | None = None) -> uvicorn.Server:
    """A uvicorn server for `app`; with a certificate, only TLS 1.3 handshakes succeed."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
    return uvicorn.Server(config)


def serve(app, host: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
    """Serve `app` until stopped (SIGTERM/SIGINT)."""
    build_server(app, host, port, tls_cert, tls_key).run()
