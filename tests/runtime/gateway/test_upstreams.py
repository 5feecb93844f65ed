"""Several runtime replicas behind one gateway: least-outstanding choice, retries on another replica,
drain/undrain over the admin socket, a replica killed under load."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from deepfleet.pki import ensure_client_cert, ensure_server_cert
from deepfleet_runtime.gateway.config import AuditSection, GatewayConfig, RoutingSection, TlsSection, UpstreamSection
from deepfleet_runtime.gateway.upstreams import UpstreamPool
from deepfleet_runtime.server import create_app
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port
from tests.runtime.conftest import LIMITS

from .conftest import RUNTIME_COMMAND, audit_records, runtime_process, running_gateway, write_gateway

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def _pool(*names, **routing) -> UpstreamPool:
    config = GatewayConfig(tls=TlsSection(Path("unused.crt"), Path("unused.key")), api_keys_file=Path("unused"),
                           upstreams=[UpstreamSection(url=f"http://{n}:8000", name=n) for n in names],
                           audit=AuditSection(dir=Path("unused")), routing=RoutingSection(**routing))
    pool = UpstreamPool(config)
    for replica in pool.replicas.values():
        replica.healthy = True
    return pool


def test_least_outstanding_healthy_undrained_replica_is_chosen():
    pool = _pool("a", "b", "c")
    pool.replicas["a"].outstanding, pool.replicas["b"].outstanding, pool.replicas["c"].outstanding = 3, 1, 2
    assert pool.choose().name == "b"
    pool.replicas["b"].draining = True
    assert pool.choose().name == "c"
    pool.replicas["c"].healthy = False
    assert pool.choose().name == "a"
    assert pool.choose(exclude={"a"}) is None


def test_backoff_is_exponential_with_jitter_and_capped():
    pool = _pool("a", backoff_base_s=0.1, backoff_max_s=0.5)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)):
        waits = [pool._backoff(retry) for _ in range(200)]
        assert ceiling * 0.5 <= min(waits) and max(waits) <= ceiling
        assert max(waits) - min(waits) > ceiling * 0.2  # jittered, not a fixed value


@contextlib.contextmanager
def _failing_upstream():
    """An HTTP server that passes health checks but answers 500 to completions: a broken replica
    (the real runtime cannot be made to fail on demand)."""
    async def ready(_):
        return JSONResponse({"status": "ready"})

    async def broken(_):
        return JSONResponse({"error": {"message": "engine crashed"}}, 500)

    app = Starlette(routes=[Route("/ready", ready), Route("/v1/chat/completions", broken, methods=["POST"])])
    port = free_port()
    with ServerThread(build_server(app, "127.0.0.1", port)):
        yield f"http://127.0.0.1:{port}"


def test_connect_failures_and_5xx_are_retried_on_another_replica(tmp_path, gateway_pki, runtime_url):
    with _failing_upstream() as failing:
        upstreams = [{"name": "good", "url": runtime_url}, {"name": "failing", "url": failing},
                     {"name": "nothing-listens", "url": f"http://127.0.0.1:{free_port()}"}]
        site = write_gateway(tmp_path / "gw", gateway_pki, upstreams, {"tester": {"rpm": 0}},
                             routing={"health_interval_s": 60, "max_attempts": 3})
        with running_gateway(site):
            pool = site.gateway.pool
            assert not pool.replicas["nothing-listens"].healthy  # the first check decided
            pool.replicas["nothing-listens"].healthy = True  # as if it had just died
            with site.http() as client:
                statuses = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(12)]
            assert statuses == [200] * 12
            assert pool.replicas["good"].served == 12 and pool.retries > 0
            assert not pool.replicas["nothing-listens"].healthy  # a connect failure takes it out
            # counted per replica, for a rollout's bake gate (admin status and metrics)
            failing_state, good_state = pool.replicas["failing"].state(), pool.replicas["good"].state()
            assert failing_state["failed"] > 0 and failing_state["served"] == 0
            assert pool.replicas["nothing-listens"].state()["failed"] > 0
            assert good_state["failed"] == 0 and good_state["answer_seconds"] > 0
            records = [r for r in audit_records(site) if r["type"] == "request"]  # end records carry the attempts
            assert max(r["attempts"] for r in records) > 1 and {r["replica"] for r in records} == {"good"}


def test_a_request_is_held_while_the_only_replica_comes_back(tmp_path, gateway_pki, runtime_url):
    site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "only", "url": runtime_url}],
                         {"tester": {"rpm": 0}}, routing={"health_interval_s": 60})
    with running_gateway(site):
        pool = site.gateway.pool
        pool.replicas["only"].healthy = False  # as if it had been restarting: the periodic check is a minute away
        with site.http() as client:
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert pool.replicas["only"].healthy


def test_with_no_replica_back_in_time_the_answer_is_503(tmp_path, gateway_pki):
    site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "gone", "url": f"http://127.0.0.1:{free_port()}"}],
                         {"tester": {"rpm": 0}}, routing={"health_interval_s": 60, "wait_for_replica_s": 0.6})
    with running_gateway(site):
        started = time.monotonic()
        with site.http() as client:
            response = client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503 and "Retry-After" in response.headers
        assert time.monotonic() - started >= 0.6


def test_a_replica_killed_under_load_fails_no_request(tmp_path, gateway_pki, runtime_url, tiny_model_dir):
    with runtime_process(tmp_path / "r2", tiny_model_dir) as doomed:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": runtime_url},
                                                            {"name": "r2", "url": doomed.url}],
                             {"tester": {"rpm": 0, "tpm": 0, "concurrency": 0}})
        with running_gateway(site):
            pool = site.gateway.pool
            failures, answered, stop = [], [], threading.Event()

            def load():
                with site.http() as client:
                    while not stop.is_set():
                        try:
                            response = client.post("/v1/chat/completions", json=CHAT)
                            (answered if response.status_code == 200 else failures).append(response.status_code)
                        except httpx.HTTPError as exc:
                            failures.append(repr(exc))

            workers = [threading.Thread(target=load) for _ in range(4)]
            for worker in workers:
                worker.start()
            deadline = time.monotonic() + 30
            while pool.replicas["r2"].served < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            doomed.kill()
            killed_at = len(answered)
            time.sleep(2)
            stop.set()
            for worker in workers:
                worker.join()
    assert failures == []
    assert killed_at >= 5 and len(answered) > killed_at  # load went on after the kill
    assert pool.retries > 0 and not pool.replicas["r2"].healthy


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory, gateway_pki, runtime_url, tiny_model_dir):
    root = tmp_path_factory.mktemp("two-replicas")
    with runtime_process(root / "r2", tiny_model_dir) as second:
        site = write_gateway(root / "gw", gateway_pki, [{"name": "r1", "url": runtime_url},
                                                        {"name": "r2", "url": second.url}],
                             {"tester": {"rpm": 0, "tpm": 0, "concurrency": 0}})
        with running_gateway(site):
            yield site


def _admin(site, *args) -> tuple[int, dict]:
    result = subprocess.run([RUNTIME_COMMAND, "gateway-admin", "--socket", str(site.admin_socket), *args],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, json.loads(result.stdout)


def test_both_replicas_take_traffic(two_replicas):
    pool = two_replicas.gateway.pool
    before = {name: r.served for name, r in pool.replicas.items()}
    results = []

    def ask():
        with two_replicas.http() as client:
            results.extend(client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(4))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 16
    assert all(pool.replicas[name].served > before[name] for name in ("r1", "r2"))


def test_drain_lets_in_flight_requests_finish_and_sends_no_new_ones(two_replicas):
    pool = two_replicas.gateway.pool
    code, status = _admin(two_replicas, "status")
    assert code == 0 and [u["name"] for u in status["upstreams"]] == ["r1", "r2"]
    stream_body = {**CHAT, "max_tokens": 64, "stream": True}
    with two_replicas.http() as client, client.stream("POST", "/v1/chat/completions", json=stream_body) as stream:
        busy = next(name for name, r in pool.replicas.items() if r.outstanding)
        other = "r2" if busy == "r1" else "r1"
        drained = {}
        drainer = threading.Thread(target=lambda: drained.update(zip(("code", "state"),
                                                                     _admin(two_replicas, "drain", busy, "--wait", "30"))))
        drainer.start()
        text = b"".join(stream.iter_raw())  # the in-flight stream finishes on the draining replica
        drainer.join()
    assert text.rstrip().endswith(b"data: [DONE]")
    assert drained["code"] == 0 and drained["state"]["draining"] and drained["state"]["idle"]
    served = pool.replicas[busy].served
    with two_replicas.http() as client:
        assert [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(6)] == [200] * 6
    assert pool.replicas[busy].served == served and pool.replicas[other].outstanding == 0
    code, state = _admin(two_replicas, "undrain", busy)
    assert code == 0 and not state["draining"]
    assert _admin(two_replicas, "drain", "no-such-replica")[0] == 2


def test_probe_asks_a_drained_replica_through_the_gateway_without_giving_it_traffic(two_replicas):
    pool = two_replicas.gateway.pool
    assert _admin(two_replicas, "drain", "r2")[0] == 0
    try:
        code, answer = _admin(two_replicas, "probe", "r2", "--model", "tiny", "--max-tokens", "4")
        assert code == 0 and answer["ok"] and answer["completion_tokens"] == 4 and answer["content"]
        assert pool.replicas["r2"].draining and pool.choose().name == "r1"  # still out of rotation
        code, refused = _admin(two_replicas, "probe", "r2", "--model", "no-such-model")
        assert code == 1 and not refused["ok"] and refused["status"] == 404
    finally:
        _admin(two_replicas, "undrain", "r2")
    assert _admin(two_replicas, "probe", "no-such-replica", "--model", "tiny")[0] == 2


def test_admin_socket_is_private(two_replicas):
    assert oct(two_replicas.admin_socket.stat().st_mode & 0o777) == "0o600"


def test_replica_on_another_host_is_reached_with_mutual_tls(tmp_path, gateway_pki, engine):
    """The runtime serves TLS and wants a client certificate from the CA; the gateway presents its own."""
    runtime_cert, _ = ensure_server_cert(gateway_pki.dir, "gpu2", ["127.0.0.1"])
    client_cert, _ = ensure_client_cert(gateway_pki.dir, "gw")
    port = free_port()
    server = build_server(create_app(engine, LIMITS, load_in_background=False), "127.0.0.1", port,
                          runtime_cert.cert, runtime_cert.key, client_ca=gateway_pki.ca)
    with ServerThread(server):
        url = f"https://127.0.0.1:{port}"
        with pytest.raises((ssl.SSLError, httpx.HTTPError)):  # no client certificate: refused
            httpx.get(f"{url}/ready", verify=ssl.create_default_context(cafile=str(gateway_pki.ca))).raise_for_status()
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "gpu2", "url": url}], {"tester": {}},
                             upstream_tls={"ca": str(gateway_pki.ca), "cert": str(client_cert.cert),
                                           "key": str(client_cert.key)})
        with running_gateway(site), site.openai() as client:
            answer = client.chat.completions.create(model="tiny", messages=CHAT["messages"], max_tokens=4)
        assert answer.choices[0].message.content


def test_a_probes_completion_is_audited_like_any_other(two_replicas):
    """A probe sends a prompt to a replica and gets an answer back around every API key: whoever
    can reach the admin socket must not be able to use the model unrecorded."""
    code, answer = _admin(two_replicas, "probe", "r1", "--model", "tiny", "--prompt", "probe me", "--max-tokens", "3")
    assert code == 0
    records = [json.loads(line) for path in sorted(two_replicas.audit_dir.glob("audit-*.jsonl"))
               for line in path.read_text().splitlines()]
    probes = [r for r in records if r.get("type") == "probe"]
    assert probes and probes[-1]["replica"] == "r1" and probes[-1]["model"] == "tiny"
    assert probes[-1]["prompt"] == [{"role": "user", "content": "probe me"}]
    assert probes[-1]["completion"] == answer["content"] and probes[-1]["status"] == 200
    assert probes[-1]["completion_tokens"] == 3 and probes[-1]["client"] == "admin socket"
