"""A hospital's network on the test machine's loopback, for test hosts that share it (--network host):
an internal mirror served over HTTPS with a certificate of the hospital's own CA (tests/hospitalca.py),
and an outbound HTTP proxy that logs every request and forwards only to the hosts it is given (on
127.0.0.1): nothing leaves the machine.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from .aptrepo import _QuietHandler


class HttpsRepoServer:
    """Serves `root` over HTTPS on 127.0.0.1 (a free port), with `context`'s certificate."""

    def __init__(self, root: Path, context: ssl.SSLContext):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HttpsRepoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class ForwardProxy:
    """An HTTP proxy (absolute-URI GETs, as apt sends them): logs each request line, forwards it to
    127.0.0.1 when its host is one of `routes` ({"upstream.hospital.test": port}), else answers 403."""

    def __init__(self, routes: dict[str, int]):
        self.requests: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                proxy.requests.append(self.requestline)
                target = urlsplit(self.path)
                port = routes.get(target.hostname or "")
                if port is None or target.port not in (None, port):
                    self.send_error(403, "not a route of this test proxy")
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                upstream.request("GET", target.path or "/", headers={"Host": target.netloc})
                response = upstream.getresponse()
                body = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_CONNECT(self):  # noqa: N802
                proxy.requests.append(self.requestline)
                self.send_error(403, "this test proxy tunnels nothing")

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
