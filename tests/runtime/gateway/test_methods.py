"""Only the allowlisted method of each API route reaches the upstream; answers without a body
(to HEAD, 204, 304) are read as such and never wait for one."""

from __future__ import annotations

import asyncio

from deepfleet_runtime.gateway.upstream_http import HttpPool

from .conftest import running_gateway, write_gateway
from .fakeupstream import fake_runtime


def test_methods_off_the_allowlist_get_405_and_are_not_forwarded(tmp_path, gateway_pki):
    with fake_runtime() as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}], {"tester": {}},
                             routing={"read_timeout_s": 30})
        with running_gateway(site), site.http() as client:
            head = client.head("/v1/models", timeout=5)
            put = client.put("/v1/chat/completions", json={})
            get = client.get("/v1/completions")
            replica = site.gateway.pool.replicas["r1"]
            assert replica.served == 0 and replica.outstanding == 0
            assert client.get("/v1/models").status_code == 200  # the allowlisted method still works
    assert (head.status_code, head.headers["allow"]) == (405, "GET")
    assert (put.status_code, put.headers["allow"]) == (405, "POST") and "POST" in put.json()["error"]["message"]
    assert get.status_code == 405


def test_bodiless_answers_are_not_waited_for():
    async def run():
        with fake_runtime() as upstream:
            pool = HttpPool(upstream, None, connect_timeout_s=5, read_timeout_s=30)
            try:
                response = await asyncio.wait_for(pool.request("HEAD", "/v1/models", {}), 10)
                assert response.status_code == 200 and int(response.headers["content-length"]) > 0
                assert await asyncio.wait_for(response.read(), 5) == b""  # not 30 s of waiting for a body
                await response.aclose()
                again = await pool.request("GET", "/v1/models", {})  # the connection stays in step
                assert b"tiny" in await again.read()
                await again.aclose()
            finally:
                pool.close()

    asyncio.run(run())
