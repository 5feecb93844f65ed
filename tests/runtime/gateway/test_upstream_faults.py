"""What clients see and pay when upstreams fail: no internal addresses or OS errors in answers,
a request that crashes replicas tried on two at most, a client that leaves mid-request still
charged, and /v1/models as the key's allowlist sees it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import httpx

from tests.conftest import free_port

from .conftest import audit_records, running_gateway, write_gateway
from .fakeupstream import fake_runtime

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _records(site) -> list[dict]:
    return audit_records(site)


@contextlib.contextmanager
def crashing_replica(received: list):
    """A replica that passes health checks and drops the connection on any completion (as a
    process crashing on it would); each completion it got is appended to `received`."""
    port = free_port()
    ready = b'{"status":"ready"}'
    loop = asyncio.new_event_loop()

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"POST"):
                    received.append(port)
                    writer.transport.abort()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(ready), ready))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def test_a_request_that_crashes_replicas_is_tried_on_two_at_most(tmp_path, gateway_pki):
    received: list = []
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(crashing_replica(received)) for _ in range(4)]
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": f"r{i}", "url": u} for i, u in enumerate(urls)],
                             {"tester": {}}, routing={"health_interval_s": 60, "max_attempts": 4,
                                                      "wait_for_replica_s": 0.3})
        with running_gateway(site), site.http() as client:
            response = client.post("/v1/chat/completions", json=CHAT)
            down = [r.name for r in site.gateway.pool.replicas.values() if not r.healthy]
    assert response.status_code == 503
    assert len(set(received)) == 2 and len(down) == 2  # two replicas, not all four


def test_503_answers_name_no_internal_address_or_os_error(tmp_path, gateway_pki):
    port = free_port()  # nothing listens there
    site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "gone", "url": f"http://127.0.0.1:{port}"}],
                         {"tester": {}}, routing={"health_interval_s": 60, "wait_for_replica_s": 0.3})
    with running_gateway(site), site.http() as client:
        site.gateway.pool.replicas["gone"].healthy = True  # as if it had just died
        response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert str(port) not in message and "127.0.0.1" not in message and "Errno" not in message
    assert "unavailable" in message
    record = next(r for r in _records(site) if r.get("request_id") == response.headers["x-request-id"]
                  and r["type"] == "request")
    assert str(port) in record["error"]  # the operator still sees what failed


def test_models_lists_only_what_the_key_may_use(tmp_path, gateway_pki):
    with fake_runtime() as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}],
                             {"tester": {}, "tiny-only": {"models": ["tiny"]}})
        with running_gateway(site):
            with site.http("tiny-only") as client:
                limited = [m["id"] for m in client.get("/v1/models").json()["data"]]
            with site.http() as client:
                everything = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert limited == ["tiny"] and everything == ["tiny", "other"]


def test_a_client_leaving_before_a_whole_answer_is_still_charged(tmp_path, gateway_pki):
    with fake_runtime(delay_s=3) as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}],
                             {"tester": {"tpm": 100, "rpm": 0}})
        body = {**CHAT, "max_tokens": 60}
        with running_gateway(site):
            with site.http() as client:
                try:
                    client.post("/v1/chat/completions", json=body, timeout=0.5)
                except httpx.TimeoutException:
                    pass  # the client gave up just before the end
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(r["type"] == "request" and r["status"] == 499
                                                          for r in _records(site)):
                time.sleep(0.05)
            with site.http() as client:
                again = client.post("/v1/chat/completions", json=body)
    assert again.status_code == 429  # the first request's 60 tokens were charged, not given back
