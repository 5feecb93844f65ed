"""The site deploy on a real test host over SSH, checked from the outside with the openai SDK."""

from __future__ import annotations

import re
import socket
import ssl

import openai
import pytest

pytestmark = pytest.mark.fleet
MESSAGES = [{"role": "user", "content": "Hello from the tests"}]


def _client(site, key=None):
    http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(site.ca_cert)))
    return openai.OpenAI(base_url=site.base_url, api_key=key or site.api_key, http_client=http, max_retries=0)


def test_first_deploy_changed_the_host(site):
    assert site.first_deploy.failed_hosts == []
    assert site.first_deploy.changed > 10


def test_chat_completion_through_tls_with_the_sdk(site):
    with _client(site) as client:
        # greedy, so that the stream must repeat the whole answer (a random model may answer in blanks)
        response = client.chat.completions.create(model="tiny-deepseek-v3", messages=MESSAGES, max_tokens=16,
                                                  temperature=0)
        assert response.usage.completion_tokens > 0 and response.choices[0].message.content is not None
        stream = client.chat.completions.create(model="tiny-deepseek-v3", messages=MESSAGES, max_tokens=16,
                                                temperature=0, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == response.choices[0].message.content


def test_wrong_api_key_is_401(site):
    with _client(site, key="dfk-wrong") as client, pytest.raises(openai.AuthenticationError) as error:
        client.models.list()
    assert error.value.status_code == 401


def test_tls12_only_client_is_refused(site):
    context = ssl.create_default_context(cafile=str(site.ca_cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", site.host.ports["gateway_port"]), timeout=10) as sock:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(sock, server_hostname="127.0.0.1")


def test_second_deploy_reports_no_changes(site):
    result = site.deploy()
    assert (result.changed, result.changed_operations) == (0, [])


def test_services_run_unprivileged_and_secrets_are_closed(site):
    assert site.on_host("ps -o user= -C deepfleet-runtime -C python3 | sort -u").split() == ["deepfleet",
                                                                                             "deepfleet-gateway"]
    for unit, account in (("deepfleet-runtime", "deepfleet"), ("deepfleet-gateway", "deepfleet-gateway")):
        assert site.on_host(f"ps -o user= -p $(systemctl show -p MainPID --value {unit})").strip() == account
    modes = site.on_host("stat -L -c '%n %U:%G %a' /etc/deepfleet/tls/server.key /etc/deepfleet/tls "
                           "/etc/deepfleet/api_keys.json /opt/deepfleet/venv")  # -L: the venv link's target
    assert modes.split("\n")[:4] == [
        "/etc/deepfleet/tls/server.key root:deepfleet 640",
        "/etc/deepfleet/tls root:deepfleet 750",
        "/etc/deepfleet/api_keys.json root:deepfleet-gateway 640",  # only the gateway reads the key hashes
        "/opt/deepfleet/venv root:root 755",
    ]
    assert site.api_key not in site.on_host("cat /etc/deepfleet/api_keys.json")


def test_dry_diff_shows_exactly_an_inventory_override(site, tmp_path):
    inventory = site.with_overrides(tmp_path / "inventory.json", runtime_max_prompt_tokens=77)
    result = site.deploy(inventory, dry=True, diff=True)
    # The rendered file, and the runtime release made of it (model + runtime + this config).
    assert result.changed_operations == ["deepfleet runtime | Runtime config",
                                         "deepfleet runtime | Runtime release (model + runtime + config)"]
    assert re.search(r"-\s+max_prompt_tokens: 4096\n", result.log) and re.search(r"\+\s+max_prompt_tokens: 77\n", result.log)
    assert "4096" in site.on_host("grep max_prompt_tokens: /etc/deepfleet/runtime.yaml")  # dry: nothing applied


def test_secrets_never_appear_in_verbose_deploy_output(site, tmp_path):
    key_pem = (site.inventory.parent / "pki" / "hosts" / "h1" / "server.key").read_text()
    key_body = "".join(key_pem.splitlines()[1:-1])
    site.on_host("rm /etc/deepfleet/tls/server.key")
    result = site.deploy(verbosity=3, diff=True)
    assert result.changed_operations[0] == "deepfleet gateway | TLS server key"
    for secret in (key_body[:40], key_body[-40:], site.api_key):
        assert secret not in result.log
    with _client(site) as client:
        assert client.models.list().data
