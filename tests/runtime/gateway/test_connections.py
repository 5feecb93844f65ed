"""Hostile clients on real sockets: thousands of idle and slow-header connections, huge headers,
one address hogging connections. A legitimate client is still served."""

from __future__ import annotations

import resource
import socket
import ssl
import subprocess

import httpx
import openai
import pytest

from .conftest import RUNTIME_COMMAND, running_gateway, wait_until_ready, write_gateway
from .fakeupstream import fake_runtime

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
GATEWAY_FILES = 1024  # the gateway process gets the usual default soft and hard limit


def _raise_own_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < needed:
        pytest.skip(f"this test needs {needed} file descriptors; the hard limit is {hard}")
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_by_peer(sock: socket.socket, wait_s: float = 10) -> bool:
    """True once the gateway closes the connection (what it still sends is read and dropped)."""
    sock.settimeout(wait_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, ssl.SSLError):
        return True
    except (TimeoutError, socket.timeout):
        return False


def _tls(site, port: int, source: str) -> ssl.SSLSocket:
    return site.tls().wrap_socket(_connect(port, source), server_hostname="127.0.0.1")


def _limit_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (GATEWAY_FILES, GATEWAY_FILES))


def test_thousands_of_idle_and_slow_connections_lock_nobody_out(tmp_path, gateway_pki):
    idle_count, slow_count = 2000, 300
    _raise_own_fd_limit(idle_count + slow_count + 512)
    held: list[socket.socket] = []
    with fake_runtime(events=2) as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}], {"tester": {}},
                             connections={"max_per_client": 64, "header_timeout_s": 60, "handshake_timeout_s": 60})
        log = open(site.root / "gateway.log", "ab")
        process = subprocess.Popen([RUNTIME_COMMAND, "gateway", "--config", str(site.config_path)],
                                   stdout=log, stderr=subprocess.STDOUT, preexec_fn=_limit_files)
        try:
            wait_until_ready(f"{site.url}/health", process, site.root / "gateway.log", verify=site.tls())
            for number in range(idle_count):  # TCP only, never a TLS handshake, from 40 addresses
                held.append(_connect(site.port, f"127.0.0.{2 + number % 40}"))
            for number in range(slow_count):  # TLS done, then half a request's headers, never the rest
                sock = _tls(site, site.port, f"127.0.1.{2 + number % 10}")
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
                held.append(sock)
            huge = _tls(site, site.port, "127.0.2.2")  # a 4 MiB header line: refused after 32 KiB
            huge.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Big: ")
            try:
                for _ in range(64):
                    huge.sendall(b"a" * 65536)
            except OSError:
                pass  # closed by the gateway before all of it went out
            assert _closed_by_peer(huge)
            held.append(huge)
            with openai.OpenAI(base_url=f"{site.url}/v1", api_key=site.keys["tester"], max_retries=0, timeout=1.0,
                               http_client=openai.DefaultHttpxClient(verify=site.tls())) as client:
                answer = client.chat.completions.create(**CHAT)  # served within the client's 1 s deadline
            assert answer.choices[0].message.content
            assert process.poll() is None
        finally:
            for sock in held:
                sock.close()
            process.terminate()
            process.wait(timeout=60)
            log.close()


def test_idle_slow_and_oversized_requests_are_closed(tmp_path, gateway_pki):
    with fake_runtime(events=2) as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}], {"tester": {}},
                             connections={"handshake_timeout_s": 0.5, "header_timeout_s": 0.5, "idle_timeout_s": 0.5,
                                          "max_header_bytes": 8192, "max_per_client": 8})
        with running_gateway(site):
            no_handshake = _connect(site.port, "127.0.3.1")
            assert _closed_by_peer(no_handshake)  # a TCP connection that never starts TLS
            slow = _tls(site, site.port, "127.0.3.2")
            slow.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n")
            slow.settimeout(10)
            assert slow.recv(200).startswith(b"HTTP/1.1 408")
            big = _tls(site, site.port, "127.0.3.3")
            big.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 20000)
            big.settimeout(10)
            assert big.recv(200).startswith(b"HTTP/1.1 431")
            keep_alive = _tls(site, site.port, "127.0.3.4")
            keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
            keep_alive.settimeout(10)
            assert keep_alive.recv(4096).startswith(b"HTTP/1.1 200")
            assert _closed_by_peer(keep_alive)  # idle after its answer: closed
            hog = [_connect(site.port, "127.0.3.5") for _ in range(12)]
            closed = [_closed_by_peer(sock, wait_s=0.2) for sock in hog[8:]]
            assert all(closed)  # beyond 8 from one address: closed at once
            table = site.gateway.connections
            assert table.per_client.get("127.0.3.5", 0) <= 8 and table.refused >= 4
            metrics = site.gateway.config.metrics
            text = httpx.get(f"http://{metrics.host}:{metrics.port}/metrics").text
            assert f"deepfleet_gateway_connections_refused_total {table.refused}" in text
            for sock in (no_handshake, slow, big, keep_alive, *hog):
                sock.close()
