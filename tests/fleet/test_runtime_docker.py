"""Docker mode of the runtime against this machine's real Docker engine (test hosts cannot run one).

The pieces the runtime role uses in Docker mode, not copies of them: the Dockerfile rendered by
roles/runtime_container.dockerfile, the build context of context_files (the same wheelhouse the
test hosts get), build_command and PRUNE_BUILD_STAGES, and the `docker run` arguments of
container_args. The base is the offline test host image (Debian 12 with python3 and venv), so no
registry is needed. The gateway runs as on a host, from gateway.yaml rendered by the gateway
role's own function, and the openai SDK gets a completion through it over TLS 1.3.

What differs from a host: the container runs as uid 65534 instead of the `deepfleet` account
(`--user` is the one argument the role adds from the host), its name is unique to this run, and
it is labelled like test hosts, so exactly what this run created is removed afterwards. The
memlock limit is the one this machine's dockerd may grant (its own hard limit), not the default
"-1:-1" (unlimited) that GPU hosts get: raising it needs a privilege this machine's engine lacks.
"""

from __future__ import annotations

import json
import platform
import resource
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from pyinfra.api.util import get_template

from deepfleet import testhosts
from deepfleet.apikeys import create_key, host_key_file, load_keyring
from deepfleet.demo import MODEL_NAME
from deepfleet.paths import PROJECT_ROOT, cache_dir
from deepfleet.pki import ensure_server_cert, init_ca
from deepfleet.wheelhouse import TargetPlatform, build_wheelhouse
from roles.common import template
from roles.defaults import DEFAULTS
from roles.gateway import gateway_yaml_context
from roles.runtime import runtime_yaml_context
from roles.runtime_container import (PRUNE_BUILD_STAGES, build_command, container_args, context_files, dockerfile,
                                     image_tag, tarball_image)
from tests.conftest import free_port

pytestmark = pytest.mark.fleet
MESSAGES = [{"role": "user", "content": "Hello from Docker mode"}]
MEMLOCK = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {args[0]} failed: {result.stderr.strip()[-2000:]}")
    return result


def _wait(url: str, verify, timeout: float = 240, logs=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, verify=verify, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f}s\n{logs()}")


@pytest.fixture(scope="module")
def docker_runtime(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("docker-mode")
    run_id = secrets.token_hex(4)
    base = testhosts.ensure_image(cache_dir() / "testhost")
    etc, state = root / "etc", root / "state"
    (etc / "tls").mkdir(parents=True)
    state.mkdir(mode=0o777)
    state.chmod(0o777)  # the container's uid writes its HF cache here
    settings = {**DEFAULTS, "model_name": MODEL_NAME, "runtime_port": free_port(), "gateway_port": free_port(),
                "gateway_listen_address": "127.0.0.1", "deepfleet_config_dir": str(etc),
                "deepfleet_state_dir": str(state), "runtime_container_memlock": f"{MEMLOCK}:{MEMLOCK}"}
    # The model as the model role leaves it on a host: a release directory readable by the service.
    model_dir = root / "models" / MODEL_NAME
    shutil.copytree(tiny_model_dir, model_dir)
    for path in model_dir.iterdir():
        path.chmod(0o644)
    config_path = etc / "runtime.yaml"
    config_path.write_text(get_template(template("runtime.yaml.j2")).render(
        **runtime_yaml_context(settings, str(model_dir))))
    config_path.chmod(0o644)

    wheelhouse = build_wheelhouse(TargetPlatform("3.11", platform.machine(), "2.36"), cache_dir() / "wheelhouse",
                                  PROJECT_ROOT / "runtime", extras=tuple(settings["runtime_wheel_extras"]))
    text = dockerfile(settings, base, False, wheelhouse, str(config_path))
    local, manifest = context_files(wheelhouse)
    tag = image_tag(text, manifest)
    context = root / "context"
    for relative, source in local.items():
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, context / relative)
    (context / "Dockerfile").write_text(text)

    name = f"deepfleet-{run_id}-runtime"
    gateway = None
    try:
        built = subprocess.run(build_command(tag, str(context)), capture_output=True, text=True)
        _docker(*PRUNE_BUILD_STAGES[1:])
        assert built.returncode == 0, built.stderr[-3000:]
        args = container_args(settings, tag, str(config_path), str(model_dir), gpu=False, name=name)
        _docker("run", "--label", "deepfleet.testhost=1", "--label", f"deepfleet.fleet={run_id}",
                "--user", "65534:65534", *args)

        init_ca(root / "pki")
        pair, _ = ensure_server_cert(root / "pki", "docker-mode", ["localhost", "127.0.0.1"])
        shutil.copyfile(pair.cert, etc / "tls" / "server.crt")
        shutil.copyfile(pair.key, etc / "tls" / "server.key")
        key = create_key(root / "keys.json", "docker-mode")
        (etc / "api_keys.json").write_text(host_key_file(load_keyring(root / "keys.json")))
        gateway_yaml = etc / "gateway.yaml"
        gateway_yaml.write_text(get_template(template("gateway.yaml.j2")).render(**gateway_yaml_context(settings)))
        _wait(f"http://127.0.0.1:{settings['runtime_port']}/ready", verify=False,
              logs=lambda: _docker("logs", "--tail", "30", name, check=False).stderr)
        gateway = subprocess.Popen([str(Path(sys.executable).parent / "deepfleet-runtime"), "gateway", "--config",
                                    str(gateway_yaml)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ca = ssl.create_default_context(cafile=str(root / "pki" / "ca.crt"))
        base_url = f"https://127.0.0.1:{settings['gateway_port']}"
        _wait(f"{base_url}/health", verify=ca)
        yield {"name": name, "tag": tag, "base": base, "config": config_path, "ca": ca, "key": key,
               "url": f"{base_url}/v1", "runtime_port": settings["runtime_port"]}
    finally:
        if gateway:
            gateway.terminate()
            gateway.wait(timeout=30)
        _docker("rm", "--force", name, check=False)
        _docker("rmi", tag, check=False)


def _client(runtime):
    return openai.OpenAI(base_url=runtime["url"], api_key=runtime["key"], max_retries=0,
                         http_client=openai.DefaultHttpxClient(verify=runtime["ca"]))


def _inspect(runtime) -> dict:
    return json.loads(_docker("inspect", runtime["name"]).stdout)[0]


def test_completion_through_the_gateway_from_the_container(docker_runtime):
    with _client(docker_runtime) as client:
        response = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12)
        assert response.choices[0].message.content.strip()
        stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream).strip()


def test_container_runs_with_the_roles_limits_and_hardening(docker_runtime):
    info = _inspect(docker_runtime)
    hostconfig = info["HostConfig"]
    assert hostconfig["RestartPolicy"]["Name"] == "unless-stopped"
    assert hostconfig["NetworkMode"] == "host" and hostconfig["ReadonlyRootfs"] is True
    assert hostconfig["CapDrop"] == ["ALL"] and hostconfig["SecurityOpt"] == ["no-new-privileges"]
    assert hostconfig["ShmSize"] == 16 * 1024**3
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in hostconfig["Ulimits"]} == {
        "memlock": (MEMLOCK, MEMLOCK), "stack": (67108864, 67108864)}
    mounts = {m["Destination"]: m["RW"] for m in info["Mounts"]}
    assert mounts[str(docker_runtime["config"])] is False
    assert _docker("exec", docker_runtime["name"], "id", "-u").stdout.strip() == "65534"
    # Even the container's root (the file's owner) cannot write the config: the mount is read-only.
    write = _docker("exec", "--user", "0", docker_runtime["name"], "sh", "-c", f"echo x >> {docker_runtime['config']}",
                    check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_image_has_the_runtime_but_not_the_wheels_and_no_build_stage_is_left(docker_runtime):
    image = json.loads(_docker("image", "inspect", docker_runtime["tag"]).stdout)[0]
    assert image["Config"]["User"] == "65534:65534" and image["Config"]["Entrypoint"] == ["deepfleet-runtime"]
    no_wheels = _docker("run", "--rm", "--entrypoint", "sh", docker_runtime["tag"], "-c", "ls /tmp/wheels", check=False)
    assert no_wheels.returncode != 0
    assert _docker("images", "-q", "--filter", "dangling=true", "--filter",
                   "label=deepfleet.stage=runtime-build").stdout.strip() == ""


def test_restart_policy_brings_a_dead_engine_back(docker_runtime):
    _docker("exec", docker_runtime["name"], "kill", "1")
    deadline = time.monotonic() + 60
    while _inspect(docker_runtime)["RestartCount"] < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _inspect(docker_runtime)["RestartCount"] >= 1
    _wait(f"http://127.0.0.1:{docker_runtime['runtime_port']}/ready", verify=False)
    with _client(docker_runtime) as client:
        assert client.models.list().data[0].id == MODEL_NAME


def test_a_saved_image_tarball_names_its_image(docker_runtime, tmp_path):
    tarball = tmp_path / "base.tar"
    _docker("save", "--output", str(tarball), docker_runtime["base"])
    assert tarball_image(tarball) == docker_runtime["base"]
