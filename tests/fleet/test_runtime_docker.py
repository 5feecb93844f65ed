"""Docker mode of the runtime against this machine's real Docker engine (test hosts cannot run one).

The pieces the runtime role uses in Docker mode, not copies of them: the Dockerfile rendered by
roles/runtime_container.dockerfile, the build context of context_files (the same wheelhouse the
test hosts get), build_command and PRUNE_BUILD_STAGES, and the `docker run` arguments of
container_args. The base is the offline test host image (Debian 12 with python3 and venv), so no
registry is needed. The gateway runs as on a host, from gateway.yaml rendered by the gateway
role's own function, and the openai SDK gets a completion through it over TLS 1.3.

The model is laid out as the model role leaves it on a host: an encrypted release made by the
control side's own code (deepfleet.modelpack, deepfleet.modelkeys), activated by the host-side
`deepfleet-runtime model activate` into `<name>@<release>/` with `<name>@current` pointing at it,
and the fleet's keys root-only (0700 directory, 0400 files) as in /etc/deepfleet/keys.

What differs from a host: the engine runs as uid/gid 65534 instead of the `deepfleet` account
(DEEPFLEET_RUN_AS is the one argument the role adds from the host; releases are activated for group
nogroup to match), its name is unique to this run, and it is labelled like test hosts, so exactly
what this run created is removed afterwards. The memlock limit is the one this machine's dockerd
may grant (its own hard limit), not the default "-1:-1" (unlimited) that GPU hosts get: raising it
needs a privilege this machine's engine lacks.
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
from deepfleet.modelkeys import create_model_keys
from deepfleet.modelpack import ensure_release
from deepfleet.paths import PROJECT_ROOT, cache_dir
from deepfleet.pki import ensure_audit_signing_key, ensure_server_cert, init_ca
from deepfleet.wheelhouse import TargetPlatform, build_wheelhouse, recorded_hashes
from deepfleet_runtime.modelstore.release import MANIFEST_FILE
from roles.common import template
from roles.defaults import DEFAULTS
from roles.gateway import gateway_yaml_context
from roles.hostos import image_os
from roles.runtime import RUNTIME_DIRECTORY, runtime_yaml_context
from roles.runtime_container import (PRUNE_BUILD_STAGES, RUN_AS_ENV, build_command, container_args, context_files,
                                     dockerfile, image_requirements, image_tag, tarball_image)
from tests.conftest import free_port

pytestmark = pytest.mark.fleet
MESSAGES = [{"role": "user", "content": "Hello from Docker mode"}]
MEMLOCK = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
ENGINE_IDS = "65534:65534"  # nobody:nogroup, the stand-in for the host's service account
SCRATCH = f"/run/{RUNTIME_DIRECTORY}"  # the container's private tmpfs: key copy, decrypted config/tokenizer


def _docker(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, input=stdin)
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


def _push_and_activate(source: Path, keys, models: Path, keys_dir: Path, cache: Path) -> str:
    """What the model role does on a host: stage the release, then `deepfleet-runtime model activate`."""
    release_dir = ensure_release(source, MODEL_NAME, keys, cache)
    release = json.loads((release_dir / MANIFEST_FILE).read_text())["release"]
    shutil.copytree(release_dir, models / f".{MODEL_NAME}@{release}.partial")
    subprocess.run([str(Path(sys.executable).parent / "deepfleet-runtime"), "model", "activate", "--name", MODEL_NAME,
                    "--release", release, "--models-dir", str(models), "--keys-dir", str(keys_dir),
                    "--group", "nogroup", "--keep", "3"], check=True, capture_output=True)
    return release


def _host_keys(keys, keys_dir: Path) -> None:
    """The fleet's keys as the model role installs them: root, 0700 directory, 0400 files."""
    keys_dir.mkdir(mode=0o700)
    for path in [*keys.kek_files().values(), keys.verify_key_path]:
        shutil.copyfile(path, keys_dir / path.name)
        (keys_dir / path.name).chmod(0o400)


@pytest.fixture(scope="module")
def docker_runtime(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("docker-mode")
    run_id = secrets.token_hex(4)
    base = testhosts.ensure_image(cache_dir() / "testhost")
    etc, state, models = root / "etc", root / "state", root / "models"
    (etc / "tls").mkdir(parents=True)
    models.mkdir()
    state.mkdir(mode=0o777)
    state.chmod(0o777)  # the container's uid writes its HF cache here
    settings = {**DEFAULTS, "model_name": MODEL_NAME, "runtime_port": free_port(), "gateway_port": free_port(),
                "gateway_listen_address": "127.0.0.1", "deepfleet_config_dir": str(etc),
                "deepfleet_state_dir": str(state), "runtime_container_memlock": f"{MEMLOCK}:{MEMLOCK}",
                # the gateway runs on this machine, not in a host: its state, socket and port are the test's own
                "gateway_state_dir": str(root / "gateway-state"), "gateway_metrics_port": free_port(),
                "gateway_admin_socket": str(root / "gateway-admin.sock")}
    model_keys, _ = create_model_keys(root / "model-keys")
    _host_keys(model_keys, etc / "keys")
    release = _push_and_activate(tiny_model_dir, model_keys, models, etc / "keys", root / "cache")
    config_path = etc / "runtime.yaml"
    config_path.write_text(get_template(template("runtime.yaml.j2")).render(
        **runtime_yaml_context(settings, str(models / f"{MODEL_NAME}@current"))))
    config_path.chmod(0o644)

    python = image_os(DEFAULTS["runtime_image_base_cpu_os"], platform.machine()).python
    wheelhouse = build_wheelhouse(TargetPlatform(python.version, platform.machine(), python.glibc),
                                  cache_dir() / "wheelhouse", PROJECT_ROOT / "runtime",
                                  extras=tuple(settings["runtime_wheel_extras"]))
    text = dockerfile(settings, base, False, python, wheelhouse, str(config_path))
    hashes = recorded_hashes(wheelhouse)  # online, as the role takes them
    local, manifest = context_files(wheelhouse, hashes)
    tag = image_tag(text, manifest)
    context = root / "context"
    for relative, source in local.items():
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, context / relative)
    (context / "Dockerfile").write_text(text)
    (context / "wheels" / "requirements.txt").write_text(image_requirements(settings, wheelhouse, hashes))

    name = f"deepfleet-{run_id}-runtime"
    gateway, gateway_log = None, root / "gateway.log"
    try:
        built = subprocess.run(build_command(tag, str(context)), capture_output=True, text=True)
        _docker(*PRUNE_BUILD_STAGES[1:])
        assert built.returncode == 0, built.stderr[-3000:]
        args = container_args(settings, tag, str(config_path), str(models), str(etc / "keys"), SCRATCH, gpu=False,
                              name=name)
        _docker("run", "--label", "deepfleet.testhost=1", "--label", f"deepfleet.fleet={run_id}",
                "--env", f"{RUN_AS_ENV}={ENGINE_IDS}", *args)

        init_ca(root / "pki")
        pair, _ = ensure_server_cert(root / "pki", "docker-mode", ["localhost", "127.0.0.1"])
        shutil.copyfile(pair.cert, etc / "tls" / "server.crt")
        shutil.copyfile(pair.key, etc / "tls" / "server.key")
        shutil.copyfile(ensure_audit_signing_key(root / "pki", "docker-mode").key, etc / "tls" / "audit-signing.key")
        key = create_key(root / "keys.json", "docker-mode")
        (etc / "api_keys.json").write_text(host_key_file(load_keyring(root / "keys.json")))
        gateway_yaml = etc / "gateway.yaml"
        gateway_yaml.write_text(get_template(template("gateway.yaml.j2")).render(**gateway_yaml_context(settings, "docker-mode")))
        _wait(f"http://127.0.0.1:{settings['runtime_port']}/ready", verify=False,
              logs=lambda: _docker("logs", "--tail", "30", name, check=False).stderr)
        gateway = subprocess.Popen([str(Path(sys.executable).parent / "deepfleet-runtime"), "gateway", "--config",
                                    str(gateway_yaml)], stdout=subprocess.DEVNULL, stderr=gateway_log.open("wb"))
        ca = ssl.create_default_context(cafile=str(root / "pki" / "ca.crt"))
        base_url = f"https://127.0.0.1:{settings['gateway_port']}"
        _wait(f"{base_url}/health", verify=ca, logs=lambda: gateway_log.read_text(errors="replace")[-3000:])
        yield {"name": name, "tag": tag, "base": base, "config": config_path, "ca": ca, "key": key,
               "url": f"{base_url}/v1", "runtime_port": settings["runtime_port"], "release": release,
               "keys": model_keys, "host_keys": etc / "keys", "models": models, "state": state, "root": root,
               "model_dir": tiny_model_dir}
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
        # greedy, so that the stream must repeat the whole answer (a random model may answer in blanks)
        response = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12,
                                                  temperature=0)
        assert response.usage.completion_tokens > 0 and response.choices[0].message.content is not None
        stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12,
                                                temperature=0, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == response.choices[0].message.content


def _in_container(runtime, command: str, user: str = ENGINE_IDS, check: bool = True,
                  stdin: str | None = None) -> subprocess.CompletedProcess:
    interactive = ["--interactive"] if stdin is not None else []
    return _docker("exec", *interactive, "--user", user, runtime["name"], "sh", "-c", command, check=check, stdin=stdin)


def _engine_status(runtime) -> dict[str, str]:
    """/proc/1/status of the container's main process (the engine, after the start script's exec)."""
    lines = _in_container(runtime, "cat /proc/1/status").stdout.splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_container_runs_with_the_roles_limits_and_hardening(docker_runtime):
    info = _inspect(docker_runtime)
    hostconfig = info["HostConfig"]
    assert hostconfig["RestartPolicy"]["Name"] == "unless-stopped"
    assert hostconfig["NetworkMode"] == "host" and hostconfig["ReadonlyRootfs"] is True
    added = sorted(cap.removeprefix("CAP_") for cap in hostconfig["CapAdd"])
    assert hostconfig["CapDrop"] == ["ALL"] and added == ["CHOWN", "SETGID", "SETUID"]
    assert hostconfig["SecurityOpt"] == ["no-new-privileges"]
    assert hostconfig["ShmSize"] == 16 * 1024**3
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in hostconfig["Ulimits"]} == {
        "memlock": (MEMLOCK, MEMLOCK), "stack": (67108864, 67108864),
        "core": (0, 0)}  # no core dump can carry the keys or the decrypted weights to a disk
    mounts = {m["Destination"]: m["RW"] for m in info["Mounts"]}
    assert mounts[str(docker_runtime["config"])] is False and mounts[str(docker_runtime["models"])] is False
    # The engine itself: the service account, no capabilities left (root only copied the keys).
    engine = _engine_status(docker_runtime)
    assert engine["Uid"].split() == ["65534"] * 4 and engine["Gid"].split() == ["65534"] * 4
    assert engine["Groups"].strip() == "" and engine["NoNewPrivs"] == "1"
    assert int(engine["CapEff"], 16) == int(engine["CapPrm"], 16) == int(engine["CapAmb"], 16) == 0
    # Even the container's root (the file's owner) cannot write the config: the mount is read-only.
    write = _in_container(docker_runtime, f"echo x >> {docker_runtime['config']}", user="0", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_model_keys_are_readable_by_the_engine_and_root_only(docker_runtime):
    kek_path = next(iter(docker_runtime["keys"].kek_files().values()))
    kek = kek_path.read_text().strip()
    copies = f"{SCRATCH}/keys"
    # The copy: in memory (the container's own tmpfs), 0700/0400, the engine's.
    mounts = _in_container(docker_runtime, "cat /proc/mounts").stdout.splitlines()
    assert [line.split()[2] for line in mounts if line.split()[1] == SCRATCH] == ["tmpfs"]
    listing = _in_container(docker_runtime, f"stat -c '%a %u:%g %n' {SCRATCH} {copies} {copies}/*").stdout.split("\n")
    assert listing[:2] == [f"700 {ENGINE_IDS} {SCRATCH}", f"700 {ENGINE_IDS} {copies}"]
    assert sorted(line.split()[0] for line in listing[2:] if line) == ["400", "400"]  # the KEK, the verify key
    # The originals on the host stay root's: the engine's account cannot read them through the mount.
    assert _in_container(docker_runtime, f"cat {docker_runtime['host_keys']}/*", check=False).returncode != 0
    assert {oct(path.stat().st_mode & 0o777) for path in docker_runtime["host_keys"].iterdir()} == {"0o400"}
    # Nothing another account can read where files can be written in the container holds the key
    # (the image's own trees were built before any key existed); the engine's own account finds its
    # copy, so the search works. The key goes to grep on stdin, never on a command line.
    search = "grep -rlF -D skip -f /dev/stdin /etc /run /tmp /var /root /home /srv /mnt /dev/shm"
    assert _in_container(docker_runtime, search, user="4242:4242", check=False, stdin=kek).stdout == ""
    assert _in_container(docker_runtime, search, check=False, stdin=kek).stdout.split() == [
        f"{copies}/{kek_path.name}"]


def test_decrypted_model_files_never_reach_a_disk(docker_runtime):
    # The scratch directory for config and tokenizer was wiped after the load: only the keys remain.
    assert _in_container(docker_runtime, f"ls -A {SCRATCH}").stdout.split() == ["keys"]
    # The only writable disk the container has, the state directory, holds no plaintext weights.
    weights = (docker_runtime["model_dir"] / "model.safetensors").read_bytes()
    samples = [weights[offset:offset + 64] for offset in range(4096, len(weights), len(weights) // 8)]
    for path in docker_runtime["state"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(sample in data for sample in samples), path
    # The container's own disk layer gained nothing but the mount point of its tmpfs.
    added = [line for line in _docker("diff", docker_runtime["name"]).stdout.splitlines() if not line.startswith("C ")]
    assert added == [f"A {SCRATCH}"]


def test_image_has_the_runtime_but_not_the_wheels_and_no_build_stage_is_left(docker_runtime):
    image = json.loads(_docker("image", "inspect", docker_runtime["tag"]).stdout)[0]
    assert image["Config"]["User"] == "65534:65534" and image["Config"]["Entrypoint"] == ["deepfleet-runtime"]
    no_wheels = _docker("run", "--rm", "--entrypoint", "sh", docker_runtime["tag"], "-c", "ls /tmp/wheels", check=False)
    assert no_wheels.returncode != 0
    assert _docker("images", "-q", "--filter", "dangling=true", "--filter",
                   "label=deepfleet.stage=runtime-build").stdout.strip() == ""


def test_a_restarted_engine_serves_the_release_made_current_meanwhile(docker_runtime, tmp_path):
    # A new release, activated on the "host" as the model role does, while the engine keeps serving.
    changed = tmp_path / "model"
    shutil.copytree(docker_runtime["model_dir"], changed)
    (changed / "config.json").write_text((changed / "config.json").read_text() + "\n")  # new content, same model
    second = _push_and_activate(changed, docker_runtime["keys"], docker_runtime["models"],
                                docker_runtime["host_keys"], docker_runtime["root"] / "cache")
    assert second != docker_runtime["release"]
    # The engine dies; docker's restart policy brings it back with the same mounts, and `@current`
    # now resolves to the second release (the whole models directory is mounted, not one release).
    _in_container(docker_runtime, "kill 1")
    deadline = time.monotonic() + 60
    while _inspect(docker_runtime)["RestartCount"] < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _inspect(docker_runtime)["RestartCount"] >= 1
    _wait(f"http://127.0.0.1:{docker_runtime['runtime_port']}/ready", verify=False)
    assert f"decrypted {MODEL_NAME}@{second} " in _docker("logs", docker_runtime["name"]).stderr
    with _client(docker_runtime) as client:
        assert client.models.list().data[0].id == MODEL_NAME


def test_a_saved_image_tarball_names_its_image(docker_runtime, tmp_path):
    tarball = tmp_path / "base.tar"
    _docker("save", "--output", str(tarball), docker_runtime["base"])
    assert tarball_image(tarball) == docker_runtime["base"]
