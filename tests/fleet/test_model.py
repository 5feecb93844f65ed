"""The model supply chain on a real host: encrypted at rest, keys kept secret, resumable push,
verified switch, rollback. Runs before test_site.py and leaves the site as it found it."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deepfleet.deployrun import DeployError
from deepfleet.modelkeys import SIGNING_KEY_FILE, load_model_keys
from deepfleet.modelpack import cached_releases
from deepfleet.paths import LOCAL_INVENTORY, PROJECT_ROOT, cache_dir
from deepfleet_runtime.modelstore import Release
from deepfleet_runtime.modelstore.keys import unwrap_data_key
from deepfleet_runtime.modelstore.release import KEY_FILE
from deepfleet_runtime.tinymodel import build_tiny_model

pytestmark = pytest.mark.fleet
MODEL = "tiny-deepseek-v3"
MODELS_DIR = "/opt/deepfleet/models"
MESSAGES = [{"role": "user", "content": "Tell the fleet a story"}]
MODEL_PUSH_DEPLOY = PROJECT_ROOT / "deploys" / "model_push.py"


def _answer(site) -> str:
    with site.client() as client:
        response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    return response.choices[0].message.content


def _current(site) -> str:
    return site.on_host(f"readlink {MODELS_DIR}/{MODEL}@current").strip().rsplit("@", 1)[1]


def _model_keys(site):
    return load_model_keys(json.loads(site.inventory.read_text())["hosts"][0][1]["model_keys_dir"])


def _runtime_pid(site) -> str:
    return site.on_host("systemctl show -p MainPID --value deepfleet-runtime").strip()


def test_served_answers_equal_the_plaintext_model(site, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    assert _answer(site) == tokenizer.decode(output[0, len(prompt):], skip_special_tokens=True)
    served = site.on_host(f"ls {MODELS_DIR}/{MODEL}@current/ {MODELS_DIR}/{MODEL}@current/encrypted").split()
    assert {"manifest.json", "manifest.sig", "key.json", "model.safetensors"} <= set(served)


def test_no_plaintext_weight_bytes_reach_the_hosts_disk(site, tiny_model_dir):
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    samples = [weights[offset:offset + 48].hex() for offset in (len(weights) // 4, len(weights) // 2, len(weights) - 4096)]
    site.on_host(f"python3 -c \"open('/root/positive-control.bin', 'wb').write(bytes.fromhex('{samples[1]}'))\"")
    try:
        found = site.on_host(f"python3 -c {_quote(_SCAN)} {' '.join(samples)}").split()
    finally:
        site.on_host("rm -f /root/positive-control.bin")
    assert found == ["/root/positive-control.bin"]  # the scan finds plaintext where there is some, only there
    assert site.on_host("ls -A /run/deepfleet-runtime").split() == ["keys"]  # decrypted scratch files wiped


# Every file on persistent filesystems (not /proc, /sys, /dev, nor memory filesystems), searched
# for the given hex samples; prints the files that contain one.
_SCAN = r"""
import mmap, os, sys
samples = [bytes.fromhex(s) for s in sys.argv[1:]]
volatile = {line.split()[1] for line in open("/proc/mounts") if line.split()[2] in ("tmpfs", "ramfs", "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "mqueue")}
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in volatile and os.path.join(root, d) not in ("/proc", "/sys", "/dev")]
    for name in files:
        path = os.path.join(root, name)
        try:
            if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) == 0:
                continue
            with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if any(data.find(sample) != -1 for sample in samples):
                    print(path)
        except (OSError, ValueError):
            pass
"""


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_keys_stay_root_only_and_out_of_every_output(site, tmp_path):
    keys = _model_keys(site)
    kek, data_key = keys.current_kek(), _data_key(site, keys)
    secrets = [base64.b64encode(kek).decode(), kek.hex(), base64.b64encode(data_key).decode(), data_key.hex()]
    signing_pem = (keys.path / SIGNING_KEY_FILE).read_text().splitlines()[1]
    modes = site.on_host("stat -c '%n %U:%G %a' /etc/deepfleet/keys /etc/deepfleet/keys/*").splitlines()
    assert modes == ["/etc/deepfleet/keys root:root 700",
                     f"/etc/deepfleet/keys/model-kek-{keys.current_kek_id()}.cred root:root 400",
                     "/etc/deepfleet/keys/model-verify.pub root:root 400"]
    sealed = site.on_host(f"cat /etc/deepfleet/keys/model-kek-{keys.current_kek_id()}.cred")
    assert sealed and not any(secret in sealed for secret in secrets)  # only systemd-creds on this host opens it
    assert site.on_host("find / -xdev -name model-signing.key").strip() == ""  # never leaves the control side
    site.on_host("rm /etc/deepfleet/keys/model-kek-*.cred")
    dry = site.deploy(dry=True, diff=True, verbosity=3)
    applied = site.deploy(verbosity=3, diff=True)
    assert applied.changed_operations == [f"deepfleet model | Model key-encryption key {keys.current_kek_id()}"]
    journal = site.on_host("journalctl --no-pager -o cat")
    for output in (site.first_deploy.log, dry.log, applied.log, journal):
        for secret in [*secrets, signing_pem]:
            assert secret not in output
    assert f"model-kek-{keys.current_kek_id()}.cred" in site.on_host("ls /etc/deepfleet/keys")


def _data_key(site, keys) -> bytes:
    """The served release's data key, unwrapped here from the control side's copy of it."""
    release_name = f"{MODEL}@{_current(site)}"
    (release_dir,) = [path for path in cached_releases(cache_dir(), keys) if path.name == release_name]
    manifest = Release.open(release_dir, keys.keys).manifest
    return unwrap_data_key((release_dir / KEY_FILE).read_bytes(), keys.keys, release_name,
                           manifest.data_key_check, "key.json")


def test_interrupted_push_resumes_and_rollback_brings_back_the_previous_answers(site, tmp_path):
    before, first_release, pid = _answer(site), _current(site), _runtime_pid(site)
    build_tiny_model(tmp_path / "model-v2", seed=1)
    slow = site.with_overrides(tmp_path / "slow.json", model_source=str(tmp_path / "model-v2"),
                               model_push_max_rate_mb_s=2)
    command = [sys.executable, "-m", "pyinfra", "-y", str(LOCAL_INVENTORY), str(PROJECT_ROOT / "deploys" / "site.py")]
    push = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, "DEEPFLEET_HOSTS_FILE": str(slow)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        staged = _wait_for_staged_bytes(site, 4_000_000, push)
    finally:
        os.killpg(push.pid, signal.SIGKILL)  # the transfer dies mid-file
        push.wait()
    assert _current(site) == first_release and _runtime_pid(site) == pid and _answer(site) == before

    # The killed push streamed through the ssh client; it resumes over pyinfra's own SFTP.
    inventory = site.with_overrides(tmp_path / "v2.json", model_source=str(tmp_path / "model-v2"),
                                    model_push_transport="sftp")
    resumed = site.deploy(inventory)
    sent, held = (int(n) for n in _push_line(resumed.log))
    assert held >= staged and sent + held > 18_000_000 and sent < 18_000_000  # only the rest was sent
    second_release = _current(site)
    after = _answer(site)
    assert second_release != first_release and after != before

    rollback = subprocess.run([sys.executable, "-m", "deepfleet.cli", "rollback", str(LOCAL_INVENTORY)],
                              cwd=PROJECT_ROOT, env={**os.environ, "DEEPFLEET_HOSTS_FILE": str(inventory)},
                              capture_output=True, text=True)
    assert rollback.returncode == 0, rollback.stderr[-2000:]
    assert _current(site) == first_release and _answer(site) == before

    # The kept release rots at rest: going back to it is refused, and nothing is restarted.
    pid = _runtime_pid(site)
    site.on_host(f"python3 -c \"p='{MODELS_DIR}/{MODEL}@{second_release}/encrypted/model.safetensors'; "
                 "d=bytearray(open(p,'rb').read()); d[len(d)//2]^=1; open(p,'wb').write(bytes(d))\"")
    refused = subprocess.run([sys.executable, "-m", "deepfleet.cli", "rollback", str(LOCAL_INVENTORY),
                              "--to", second_release], cwd=PROJECT_ROOT,
                             env={**os.environ, "DEEPFLEET_HOSTS_FILE": str(inventory)}, capture_output=True, text=True)
    assert refused.returncode == 1
    assert f"{MODEL}@{second_release}: model.safetensors: chunk" in refused.stderr
    assert _current(site) == first_release and _runtime_pid(site) == pid and _answer(site) == before

    assert site.deploy().changed == 0  # the site's own release is current again: nothing to do


def _wait_for_staged_bytes(site, minimum: int, process, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        sizes = site.on_host(f"find {MODELS_DIR}/.{MODEL}@*.partial -type f -printf '%s\\n'", check=False).split()
        if sum(map(int, sizes)) >= minimum:
            return sum(map(int, sizes))
        time.sleep(0.3)
    raise AssertionError(f"the push never staged {minimum} bytes (deploy exit: {process.poll()})")


def _push_line(log: str) -> tuple[str, str]:
    match = re.search(r"model push \S+: sent (\d+) bytes, .*; (\d+) bytes were already on the host", log)
    assert match, log[-3000:]
    return match.group(1), match.group(2)


def test_a_push_that_would_not_fit_is_refused_before_it_starts(site, tmp_path):
    keys = _model_keys(site)
    (release_dir,) = [path for path in cached_releases(cache_dir(), keys) if path.name == f"{MODEL}@{_current(site)}"]
    size = f"{sum(p.stat().st_size for p in release_dir.rglob('*') if p.is_file()) / (1 << 20):.1f} MiB"
    site.on_host("mkdir -p /srv/small && mount -t tmpfs -o size=30m tmpfs /srv/small")
    try:
        small = site.with_overrides(tmp_path / "small.json", deepfleet_home="/srv/small")
        with pytest.raises(DeployError) as error:
            site.deploy(small, deploy=MODEL_PUSH_DEPLOY)
        assert re.search(rf"h1: not enough disk for the model push in /srv/small/models: \d+\.\d MiB free, the push "
                         rf"needs {size} plus {size} kept free for the next release = \d+\.\d MiB",
                         " ".join(str(error.value).split()))
        assert site.on_host("ls -A /srv/small/models").strip() == ""
    finally:
        site.on_host("umount /srv/small")


def test_a_rotated_kek_reaches_the_host_without_resending_weights(site):
    keys, before = _model_keys(site), _answer(site)
    old = keys.current_kek_id()
    rotated = subprocess.run([sys.executable, "-m", "deepfleet.cli", "model", "keys", "rotate", "--keys-dir",
                              str(keys.path)], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert rotated.returncode == 0, rotated.stderr
    new = keys.current_kek_id()
    assert f"KEK {old} -> {new}" in rotated.stdout

    deployed = site.deploy()
    assert deployed.changed_operations[0] == f"deepfleet model | Model key-encryption key {new}"
    assert deployed.changed_operations[1].startswith(f"deepfleet model | Model {MODEL}@")  # key.json only
    assert "model push" not in deployed.log  # no weights sent
    assert json.loads(site.on_host(f"cat {MODELS_DIR}/{MODEL}@current/key.json"))["kek_id"] == new

    # The host holds exactly the KEKs its kept releases are wrapped with: the old one only while an
    # older kept release needs it.
    held = {name.split("-")[2].split(".")[0] for name in site.on_host("ls /etc/deepfleet/keys").split()
            if name.startswith("model-kek-")}
    needed = {json.loads(line)["kek_id"] for line in site.on_host(
        f"for f in {MODELS_DIR}/{MODEL}@*/key.json; do [ -L $(dirname $f) ] || tr -d '\\n' < $f; echo; done"
    ).splitlines() if line.strip()}
    assert held == needed and new in held

    # Without the old KEK, the runtime still opens the release: it is wrapped with the new one now.
    site.on_host(f"rm -f /etc/deepfleet/keys/model-kek-{old}.* && systemctl restart deepfleet-runtime && "
                 f"/opt/deepfleet/venv/bin/deepfleet-runtime wait-ready "
                 f"http://127.0.0.1:{site.host.ports['runtime_port']}/ready --timeout 120")
    assert _answer(site) == before
    assert site.deploy().changed_operations == []  # the old KEK is not sent again: no kept release of it is served


def test_models_on_a_data_disk_are_served_from_it_and_plan_refuses_a_disk_too_small(site, tmp_path):
    """deepfleet_models_dir on its own filesystem (a tmpfs mounted in the host, as a data disk would be):
    the release is pushed there and served; one too small is refused by `deepfleet plan`, nothing copied."""
    before = _answer(site)
    site.on_host("mkdir -p /srv/data /srv/tiny && mount -t tmpfs -o size=256m tmpfs /srv/data "
                 "&& mount -t tmpfs -o size=30m tmpfs /srv/tiny")
    try:
        on_data = site.with_overrides(tmp_path / "data.json", deepfleet_models_dir="/srv/data/models")
        assert site.deploy(on_data).changed > 0
        served = site.on_host(f"readlink -f /srv/data/models/{MODEL}@current").strip()
        assert site.on_host(f"stat -f -c %T {served}").strip() == "tmpfs"
        assert f"/srv/data/models/{MODEL}@" in site.on_host("cat /opt/deepfleet/releases/current/runtime.yaml")
        assert _answer(site) == before

        tiny = site.with_overrides(tmp_path / "tiny.json", deepfleet_models_dir="/srv/tiny/models")
        plan = subprocess.run([str(os.path.join(os.path.dirname(sys.executable), "deepfleet")), "plan",
                               str(LOCAL_INVENTORY)], capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT,
                              env={**os.environ, "DEEPFLEET_HOSTS_FILE": str(tiny)})
        assert plan.returncode == 1, plan.stdout[-2000:]
        said = " ".join((plan.stdout + plan.stderr).split())
        assert re.search(r"h1: not enough disk for the model push in /srv/tiny/models: \d+\.\d MiB free, the push "
                         r"needs .* Free \d+\.\d MiB on the host", said), said[-3000:]
        assert site.on_host("find /srv/tiny -mindepth 1").strip() == ""  # planned: nothing created, nothing copied
    finally:
        site.deploy()
        site.on_host("umount /srv/data /srv/tiny", check=False)
