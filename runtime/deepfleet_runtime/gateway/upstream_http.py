"""A lean HTTP/1.1 client for the gateway's upstreams (deepfleet runtimes): keep-alive pools, the
request written in one piece, bodies by Content-Length or chunked, streamed as they arrive.

The gateway forwards every request, so this hop's cost is the gateway's cost: a general client
(httpx) spent about half of the gateway's CPU here (bench/gateway_overhead.py). Only what the
runtime speaks is supported; anything else is an UpstreamProtocolError.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 << 10
IDLE_TTL_S = 4.0  # below uvicorn's 5 s keep-alive: the runtime never closes a connection we reuse


class UpstreamError(Exception):
    """The upstream exchange failed; subclasses say how far it got."""


class UpstreamConnectError(UpstreamError):
    """No connection (refused, unreachable, TLS handshake failed, connect timeout)."""


class UpstreamDisconnected(UpstreamError):
    """The connection broke or closed before the answer was complete."""


class UpstreamTimeout(UpstreamError):
    """The upstream went silent for longer than the read timeout."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not HTTP/1.1 as the runtime speaks it."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        return (not self.reader.at_eof() and not self.writer.is_closing()
                and time.monotonic() - self.idle_since < IDLE_TTL_S)

    def close(self) -> None:
        self.writer.close()


class UpstreamResponse:
    """Status and headers of an answer; its body is read with `read` or `iter_raw`, then `aclose`."""

    def __init__(self, pool: "HttpPool", conn: _Connection, status: int, headers: dict[str, str], timeout_s: float,
                 bodiless: bool = False):
        self.status_code, self.headers = status, headers
        self._pool, self._conn, self._timeout_s = pool, conn, timeout_s
        self._done = bodiless  # an answer to HEAD, or 1xx/204/304: no body, whatever the headers say
        self._reusable = headers.get("connection", "").lower() != "close"
        self.content = b""

    async def read(self) -> bytes:
        """The whole body (read once, then kept in `content`)."""
        if not self._done:
            self.content = b"".join([chunk async for chunk in self.iter_raw()])
        return self.content

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked encoding removed)."""
        if self._done:
            return
        reader, length = self._conn.reader, self.headers.get("content-length")
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                while chunk := await self._read(_next_chunk(reader)):
                    yield chunk
            elif length is not None:
                remaining = int(length)
                while remaining:
                    chunk = await self._read(reader.read(min(remaining, 1 << 16)))
                    if not chunk:
                        raise UpstreamDisconnected("the connection closed in the middle of the body")
                    remaining -= len(chunk)
                    yield chunk
            else:
                self._reusable = False
                while chunk := await self._read(reader.read(1 << 16)):
                    yield chunk
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError) as exc:
            raise UpstreamDisconnected(f"the upstream broke off its answer: {type(exc).__name__}") from None
        except ValueError:
            raise UpstreamProtocolError("bad chunked encoding in the upstream answer") from None
        self._done = True

    async def _read(self, awaitable):
        try:
            async with asyncio.timeout(self._timeout_s):
                return await awaitable
        except TimeoutError:
            raise UpstreamTimeout(f"the upstream sent nothing for {self._timeout_s:.0f}s") from None

    async def aclose(self) -> None:
        """Give the connection back when the body was read whole; otherwise close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._reusable:
            self._pool.give_back(conn)
        else:
            conn.close()


class HttpPool:
    """Keep-alive connections to one upstream (http:// or https://)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, connect_timeout_s: float,
                 read_timeout_s: float, max_idle: int = 256):
        parts = urlsplit(url)
        self.host, self.tls = parts.hostname, parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self._host_header = parts.netloc.encode()
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self.connect_timeout_s, self.read_timeout_s, self._max_idle = connect_timeout_s, read_timeout_s, max_idle
        self._idle: list[_Connection] = []

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                      timeout_s: float | None = None) -> UpstreamResponse:
        """Send a request; return once the answer's status and headers are in."""
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n" % (
            method.encode(), path.encode(), self._host_header, len(body))
        head += b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()) + b"\r\n"
        timeout_s = timeout_s or self.read_timeout_s
        while True:
            conn, reused = self._take_idle(), True
            if conn is None:
                conn, reused = await self._connect(), False
            try:
                conn.writer.write(head + body)
                async with asyncio.timeout(timeout_s):
                    await conn.writer.drain()
                    status, response_headers = _parse_head(await conn.reader.readuntil(b"\r\n\r\n"))
                bodiless = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                return UpstreamResponse(self, conn, status, response_headers, timeout_s, bodiless)
            except TimeoutError:
                conn.close()
                raise UpstreamTimeout(f"no answer within {timeout_s:.0f}s") from None
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError) as exc:
                conn.close()
                if reused:
                    continue  # the upstream had closed this idle connection: try a fresh one
                raise UpstreamDisconnected(f"the upstream closed the connection before answering "
                                           f"({type(exc).__name__})") from None
            except BaseException:
                conn.close()
                raise

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def give_back(self, conn: _Connection) -> None:
        if len(self._idle) < self._max_idle and conn.usable():
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self._ssl,
                                                               limit=MAX_HEAD_BYTES)
        except TimeoutError:
            raise UpstreamConnectError(f"no connection to {self.host}:{self.port} within "
                                       f"{self.connect_timeout_s:.0f}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return _Connection(reader, writer)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _next_chunk(reader: asyncio.StreamReader) -> bytes:
    """The next chunk of a chunked body; b"" after the last one (trailers skipped)."""
    size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
    if size:
        return (await reader.readexactly(size + 2))[:-2]
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass
    return b""


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise UpstreamProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(rest[:3]), headers
