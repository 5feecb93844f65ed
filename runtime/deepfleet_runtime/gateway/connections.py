"""Connection limits on the gateway's public port, enforced where connections are accepted.

uvicorn and httptools have no connection cap, start no timer before the first request and take
headers of any size, so idle or slow clients could hold every file descriptor. Here every
accepted TCP connection is counted before its TLS handshake (total and per client address), the
handshake has a deadline, a request's headers must arrive whole within a deadline and a size,
and idle keep-alive connections are closed. When the total is reached, the connection waiting
longest without a request in progress makes room (a new client is never locked out by idle ones
while requests in progress are never cut); over the per-address limit a connection is closed at
once. The TLS handshake is the event loop's own (`loop.connect_accepted_socket`, with a deadline).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from collections import OrderedDict

import uvicorn

from ..serving import build_server
from .config import ConnectionsSection, GatewayConfig

log = logging.getLogger(__name__)

CLOSE_GRACE_S = 1.0  # a refused connection's TLS close_notify gets this long, then it is aborted
FD_RESERVE = 256  # descriptors kept for upstream connections, audit files, listeners


class ConnectionTable:
    """Counts connections, total and per client address; knows which ones wait without a request."""

    def __init__(self, section: ConnectionsSection, max_total: int):
        self.section, self.max_total = section, max_total
        self.total = 0
        self.per_client: dict[str, int] = {}
        self._waiting: OrderedDict[object, None] = OrderedDict()  # connections with no request in progress
        self.refused = 0
        self.evicted = 0

    def admit(self, client: str, connection) -> bool:
        """Count a new connection in; False if it must be closed at once."""
        if self.per_client.get(client, 0) >= self.section.max_per_client:
            self.refused += 1
            return False
        if self.total >= self.max_total:
            if not self._waiting:
                self.refused += 1
                return False
            oldest, _ = self._waiting.popitem(last=False)
            self.evicted += 1
            oldest.evict()
        self.total += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        self._waiting[connection] = None
        return True

    def busy(self, connection) -> None:
        self._waiting.pop(connection, None)

    def idle(self, connection) -> None:
        self._waiting[connection] = None

    def release(self, client: str, connection) -> None:
        self._waiting.pop(connection, None)
        self.total -= 1
        left = self.per_client[client] - 1
        if left:
            self.per_client[client] = left
        else:
            del self.per_client[client]


class _Slot:
    """One accepted connection's place in the table, from accept (before TLS) to close."""

    __slots__ = ("client", "table", "task", "protocol", "released")

    def __init__(self, client: str, table: ConnectionTable):
        self.client, self.table = client, table
        self.task = self.protocol = None
        self.released = False

    def evict(self) -> None:
        """Close to make room: a connection waiting without a request in progress."""
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.abort()
        elif self.task is not None:
            self.task.cancel()  # still in its TLS handshake
        self.release()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.table.release(self.client, self)


class GuardedServer(uvicorn.Server):
    """uvicorn's server with its own accept loop: each connection is counted in the table (or
    closed at once) before its TLS handshake, which `loop.connect_accepted_socket` runs with a
    deadline; then uvicorn's HTTP protocol (bounded by _bounded_http) takes it over."""

    def __init__(self, config: uvicorn.Config, table: ConnectionTable, tls: ssl.SSLContext | None):
        super().__init__(config)
        self.table, self.tls = table, tls

    async def startup(self, sockets=None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise SystemExit(3)
        config = self.config
        sock = _listener(config.host, config.port, config.backlog)

        def create_protocol():
            return config.http_protocol_class(config=config, server_state=self.server_state,
                                              app_state=self.lifespan.state)

        self.servers = [_AcceptLoop(sock, create_protocol, self.table, self.tls)]
        log.info("gateway listening on %s:%d (%s)", config.host, config.port, "TLS" if self.tls else "plain HTTP")
        self.started = True


class _AcceptLoop:
    """Accepts connections on `sock` until closed (what uvicorn calls a server: close, wait_closed)."""

    def __init__(self, sock, create_protocol, table: ConnectionTable, tls):
        self._sock, self._create, self._table, self._tls = sock, create_protocol, table, tls
        self._task = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and the like: the table's cap should prevent it
                log.warning("cannot accept a connection: %s", exc)
                await asyncio.sleep(0.05)
                continue
            slot = _Slot(address[0] if isinstance(address, tuple) else "", self._table)
            if not self._table.admit(slot.client, slot):
                conn.close()
                continue
            if conn.family in (socket.AF_INET, socket.AF_INET6):  # as the loop's own servers do: no Nagle delay
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            slot.task = asyncio.ensure_future(self._open(conn, slot))

    async def _open(self, conn, slot: _Slot) -> None:
        def protocol():
            slot.protocol = self._create()
            slot.protocol.gate = slot
            return slot.protocol

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol, conn, ssl=self._tls,
                ssl_handshake_timeout=self._table.section.handshake_timeout_s if self._tls else None)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.CancelledError):
            conn.close()
            slot.release()

    def close(self) -> None:
        self._task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, return_exceptions=True)


def _listener(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _bounded_http(inner_class: type, table: ConnectionTable) -> type:
    """`inner_class` whose requests must send their headers whole within header_timeout_s and
    max_header_bytes (else 408/431 and the connection closes); it tells the table when a request
    is in progress, and closes keep-alive connections idle for idle_timeout_s."""
    section = table.section

    class BoundedHttp(inner_class):
        gate = None
        _head_bytes = 0
        _in_head = True
        _head_timer = None
        _made = False
        _early = b""
        _refused = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._made = True
            self._start_head_timer()
            if self._early:
                early, self._early = self._early, b""
                self.data_received(early)

        def data_received(self, data: bytes) -> None:
            if not self._made:  # TLS passes on what came with the handshake before start_tls returns
                self._early += data
                return
            if self._refused:
                return  # answered 408/431 and closing: nothing more is parsed
            if not self._in_head:
                return super().data_received(data)
            self._head_bytes += len(data)
            super().data_received(data)
            if not self._in_head or self.transport is None:
                return
            if self._head_bytes > section.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large",
                             f"request headers larger than {section.max_header_bytes} bytes")
            elif self._head_timer is None:  # headers spread over reads: from now on they are timed
                self._start_head_timer()

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            self._cancel_head_timer()
            table.busy(self.gate)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._in_head = True
            table.idle(self.gate)

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)
            self.gate.release()

        def _start_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(section.header_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._in_head and self.transport is not None and not self.transport.is_closing():
                if self._head_bytes:
                    self._refuse(408, "Request Timeout", f"request headers not complete within "
                                                         f"{section.header_timeout_s:g}s")
                else:
                    self._close_soon()  # no request at all: nothing to answer

        def _refuse(self, status: int, reason: str, message: str) -> None:
            body = message.encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))
            self._refused = True
            self._close_soon()

        def _close_soon(self) -> None:
            """Close; abort if the peer has not finished the TLS close within a second."""
            transport = self.transport
            transport.close()
            self.loop.call_later(CLOSE_GRACE_S, transport.abort)

    return BoundedHttp


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def build_gateway_server(app, config: GatewayConfig) -> tuple[uvicorn.Server, ConnectionTable]:
    """The gateway's public TLS server, with the connection limits of `config.connections`."""
    section = config.connections
    server = build_server(app, config.listen.host, config.listen.port, tls_cert=config.tls.cert,
                          tls_key=config.tls.key)
    fds = raise_fd_limit()
    max_total = min(section.max_connections, max(16, fds - FD_RESERVE))
    if max_total < section.max_connections:
        log.warning("connections.max_connections is %d but this process may open %d files; at most %d "
                    "connections (raise LimitNOFILE)", section.max_connections, fds, max_total)
    table = ConnectionTable(section, max_total)
    config = server.config
    config.timeout_keep_alive = section.idle_timeout_s
    config.http_protocol_class = _bounded_http(config.http_protocol_class, table)
    return GuardedServer(config, table, config.ssl), table
