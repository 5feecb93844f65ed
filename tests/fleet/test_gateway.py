"""The gateway as deployed on a real host: keys change without a restart, the audit chain verifies
on the host, the admin socket drains, metrics stay on loopback."""

from __future__ import annotations

import json
import ssl

import httpx
import openai
import pytest

from deepfleet.apikeys import create_key, revoke_key

pytestmark = pytest.mark.fleet
RUNTIME = "/opt/deepfleet/venv/bin/deepfleet-runtime"
CHAT = {"model": "tiny-deepseek-v3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _http(site, key=None) -> httpx.Client:
    return httpx.Client(base_url=site.base_url, verify=ssl.create_default_context(cafile=str(site.ca_cert)),
                        headers={"Authorization": f"Bearer {key or site.api_key}"}, timeout=60)


def _gateway_pid(site) -> str:
    return site.on_host("systemctl show -p MainPID --value deepfleet-gateway").strip()


def test_new_and_revoked_keys_reach_the_host_without_a_restart(site):
    keyring = site.inventory.parent / "keys.json"
    pid = _gateway_pid(site)
    key = create_key(keyring, "fleet-new", rpm=100)
    added = site.deploy()
    assert added.changed_operations == ["deepfleet gateway | API key hashes"]
    with _http(site, key) as client:
        assert client.post("/chat/completions", json=CHAT).status_code == 200
    revoke_key(keyring, "fleet-new")
    assert site.deploy().changed_operations == ["deepfleet gateway | API key hashes"]
    with _http(site, key) as client:
        assert client.post("/chat/completions", json=CHAT).status_code == 401
    assert _gateway_pid(site) == pid


def test_the_audit_chain_verifies_on_the_host(site):
    http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(site.ca_cert)))
    with openai.OpenAI(base_url=site.base_url, api_key=site.api_key, http_client=http, max_retries=0) as client:
        client.chat.completions.create(**CHAT)
    out = site.on_host(f"{RUNTIME} audit verify /var/lib/deepfleet-gateway/audit")
    assert out.startswith("OK: ")
    modes = site.on_host("stat -c '%U %a' /var/lib/deepfleet-gateway/audit /var/lib/deepfleet-gateway/audit/audit-000000000000.jsonl")
    assert modes.split("\n")[:2] == ["deepfleet-gateway 750", "deepfleet-gateway 640"]
    assert site.api_key not in site.on_host("cat /var/lib/deepfleet-gateway/audit/*.jsonl")


def test_the_runtime_account_cannot_touch_the_audit_log_nor_the_gateway_the_model_keys(site):
    with site.client() as client:
        client.chat.completions.create(**CHAT)  # an audit file exists
    log = "/var/lib/deepfleet-gateway/audit/audit-000000000000.jsonl"
    attempts = {
        "append to the audit log": f"echo forged >> {log}",
        "move the audit directory away": "mv /var/lib/deepfleet-gateway/audit /var/lib/deepfleet-gateway/x",
        "read the API key hashes": "cat /etc/deepfleet/api_keys.json",
    }
    for what, command in attempts.items():
        out = site.on_host(f"setpriv --reuid deepfleet --regid deepfleet --init-groups sh -c '{command}' "
                           ">/dev/null 2>&1 && echo done || echo refused")
        assert out.strip() == "refused", f"the runtime's account could {what}"
    keys = site.on_host("setpriv --reuid deepfleet-gateway --regid deepfleet-gateway --init-groups sh -c "
                        "'cat /etc/deepfleet/keys/* /run/deepfleet-runtime/keys/*' >/dev/null 2>&1 "
                        "&& echo done || echo refused")
    assert keys.strip() == "refused", "the gateway's account could read the model keys"
    assert site.on_host("systemctl show -p User --value deepfleet-gateway").strip() == "deepfleet-gateway"


def test_drain_and_undrain_through_the_admin_socket(site):
    status = json.loads(site.on_host(f"{RUNTIME} gateway-admin status"))
    assert [u["name"] for u in status["upstreams"]] == ["h1"]
    drained = json.loads(site.on_host(f"{RUNTIME} gateway-admin drain h1 --wait 30"))
    try:
        assert drained["draining"] and drained["idle"]
        with _http(site) as client:
            refused = client.post("/chat/completions", json=CHAT)
        assert refused.status_code == 503 and refused.headers["retry-after"]
    finally:
        site.on_host(f"{RUNTIME} gateway-admin undrain h1")
    with _http(site) as client:
        assert client.post("/chat/completions", json=CHAT).status_code == 200


def test_metrics_listen_on_loopback_only(site):
    port = site.host.ports["gateway_metrics_port"]
    listening = site.on_host(f"ss -Hltn 'sport = :{port}'")
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "deepfleet_gateway_requests_total" in text and 'deepfleet_gateway_upstream_healthy{replica="h1"} 1' in text
