"""A forwarded request's audit life: a durable "started" record before anything goes upstream, an
end record on completion, disconnect or shutdown (written with the next batch, not awaited); a
start without an end verifies as interrupted."""

from __future__ import annotations

import json
import signal
import subprocess

import httpx

from deepfleet_runtime import serving
from deepfleet_runtime.gateway import audit as audit_module
from deepfleet_runtime.gateway.auditchain import verify_chain

from .conftest import RUNTIME_COMMAND, running_gateway, wait_until_ready, write_gateway
from .fakeupstream import fake_runtime

MESSAGES = [{"role": "user", "content": "the patient's question"}]
STREAM = {"model": "tiny", "messages": MESSAGES, "max_tokens": 32, "stream": True}


def _records(site) -> list[dict]:
    return [json.loads(line) for path in sorted(site.audit_dir.glob("audit-*.jsonl"))
            for line in path.read_text().splitlines()]


def _read_some_events(response: httpx.Response, count: int):
    """Read `count` events; return the line iterator (closing it would close the connection)."""
    lines, seen = response.iter_lines(), 0
    for line in lines:
        if line.startswith("data: {"):
            seen += 1
            if seen == count:
                return lines


def test_kill_9_mid_stream_leaves_a_started_record_that_verifies_as_interrupted(tmp_path, gateway_pki):
    with fake_runtime(events=10, hang_after=3) as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}], {"tester": {}})
        log = open(site.root / "gateway.log", "ab")
        process = subprocess.Popen([RUNTIME_COMMAND, "gateway", "--config", str(site.config_path)],
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(f"{site.url}/health", process, site.root / "gateway.log", verify=site.tls())
            with site.http() as client, client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
                request_id = response.headers["x-request-id"]
                lines = _read_some_events(response, 3)  # the prompt went up, part of the answer came back
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                del lines
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
    started = [r for r in _records(site) if r.get("request_id") == request_id]
    assert [r["type"] for r in started] == ["started"]
    assert started[0]["prompt"] == MESSAGES and started[0]["key_id"] == "tester" and started[0]["model"] == "tiny"
    assert started[0]["time"]
    report = verify_chain(site.audit_dir)  # not a broken chain
    assert report.interrupted == [request_id]
    verify = subprocess.run([RUNTIME_COMMAND, "audit", "verify", str(site.audit_dir)], capture_output=True, text=True)
    assert verify.returncode == 0 and "1 request(s) started without an end record: interrupted" in verify.stdout
    assert request_id in verify.stdout


def test_a_stream_cut_by_the_shutdown_grace_gets_its_end_record(tmp_path, gateway_pki, monkeypatch):
    monkeypatch.setattr(serving, "GRACEFUL_SHUTDOWN_S", 1)
    with fake_runtime(events=10, hang_after=2) as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}], {"tester": {}})
        with site.http() as client:
            with running_gateway(site):
                response = client.send(client.build_request("POST", "/v1/chat/completions", json=STREAM), stream=True)
                request_id = response.headers["x-request-id"]
                lines = _read_some_events(response, 2)
            del lines
            response.close()
    mine = [r for r in _records(site) if r.get("request_id") == request_id]
    assert [r["type"] for r in mine] == ["started", "request"]
    assert mine[1]["status"] == 503 and "shut down" in mine[1]["error"] and mine[1]["completion"] == "w0 w1 "
    assert verify_chain(site.audit_dir).interrupted == []


def test_a_completed_request_has_a_started_and_an_end_record(tmp_path, gateway_pki):
    with fake_runtime(events=3) as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}], {"tester": {}})
        with running_gateway(site), site.http() as client:
            response = client.post("/v1/chat/completions", json={**STREAM, "stream": False})
            assert response.status_code == 200
    mine = [r for r in _records(site) if r.get("request_id") == response.headers["x-request-id"]]
    assert [r["type"] for r in mine] == ["started", "request"]
    assert mine[0]["seq"] < mine[1]["seq"] and "prompt" not in mine[1] and mine[1]["completion"] == "ok ok ok "
    report = verify_chain(site.audit_dir)
    assert report.interrupted == [] and report.ended == 1


def test_the_end_record_is_not_awaited_it_goes_with_the_next_batch(tmp_path, gateway_pki, monkeypatch):
    monkeypatch.setattr(audit_module, "DEFER_S", 30.0)  # no timer: only the next batch (or close) writes it
    with fake_runtime(events=3) as upstream:
        site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": upstream}], {"tester": {}})
        with running_gateway(site), site.http() as client:
            first = client.post("/v1/chat/completions", json={**STREAM, "stream": False})
            assert first.status_code == 200  # answered while its end record still waits
            assert [(r["type"], r["request_id"]) for r in _records(site)] == [
                ("started", first.headers["x-request-id"])]
            second = client.post("/v1/chat/completions", json=STREAM)
            assert second.status_code == 200 and second.text.rstrip().endswith("data: [DONE]")
            ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
            assert [(r["type"], r["request_id"]) for r in _records(site)] == [
                ("started", ids[0]), ("request", ids[0]), ("started", ids[1])]
    assert [(r["type"], r["request_id"]) for r in _records(site)][-1] == ("request", ids[1])  # written at close
    assert verify_chain(site.audit_dir).interrupted == []
