"""`kill -9` of the gateway process under load loses no acknowledged audit record, and a restarted
gateway continues the same chain."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import httpx

from .conftest import RUNTIME_COMMAND, wait_until_ready, write_gateway

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _start(site):
    log = open(site.root / "gateway.log", "ab")
    process = subprocess.Popen([RUNTIME_COMMAND, "gateway", "--config", str(site.config_path)],
                               stdout=log, stderr=subprocess.STDOUT)
    wait_until_ready(f"{site.url}/health", process, site.root / "gateway.log", verify=site.tls())
    return process


def _load(site, acknowledged: list[str], stop: threading.Event, stream: bool) -> None:
    """Requests until the gateway dies; a request is acknowledged once its whole answer arrived."""
    body = {**CHAT, "stream": stream}
    with site.http() as client:
        while not stop.is_set():
            try:
                response = client.post("/v1/chat/completions", json=body)
                complete = response.status_code == 200 and (
                    not stream or response.text.rstrip().endswith("data: [DONE]"))
                if complete:
                    acknowledged.append(response.headers["x-request-id"])
            except httpx.HTTPError:
                return


def test_kill_9_under_load_loses_no_acknowledged_record(tmp_path, gateway_pki, runtime_url):
    site = write_gateway(tmp_path / "gw", gateway_pki, [{"name": "r1", "url": runtime_url}],
                         {"tester": {"rpm": 0, "tpm": 0, "concurrency": 0}})
    process = _start(site)
    acknowledged: list[str] = []
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(site, acknowledged, stop, i % 2 == 1)) for i in range(6)]
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # mid-load: requests are in flight right now
        process.wait(timeout=30)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        if process.poll() is None:
            process.kill()
    assert len(acknowledged) >= 40
    recorded = {json.loads(line).get("request_id") for path in site.audit_dir.glob("audit-*.jsonl")
                for line in path.read_text().splitlines()}
    assert set(acknowledged) - recorded == set()
    verify = subprocess.run([RUNTIME_COMMAND, "audit", "verify", str(site.audit_dir)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    process = _start(site)  # the chain continues after the crash
    try:
        with site.http() as client:
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once shut down
    verify = subprocess.run([RUNTIME_COMMAND, "audit", "verify", str(site.audit_dir)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
