"""Air-gapped installs: two test hosts with no network at all, installed from one signed bundle.

The bundle is built for real by `deepfleet bundle build`: Debian 12's packages resolved by apt in
a Debian 12 container (the test host image), the .debs fetched once into the project cache, the
runtime's wheelhouse, the tiny model encrypted. The hosts run with `--network none` and are
reached through pyinfra's `@docker/<container>` connector; python3-venv and what it pulls in are
removed from them first, so the deploy must install those from the bundle's repository.
The resolver image is the debootstrap-built test host image, pinned by its local image ID; a build
that names it by tag alone is refused first, with that pin in the message.
Before the good deploy, a copy of the bundle with one .deb changed is refused, on both hosts,
before anything changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from deepfleet import testhosts
from deepfleet.apikeys import create_key
from deepfleet.demo import write_local_inventory
from deepfleet.deployrun import DeployError, DeployResult, run_deploy
from deepfleet.modelkeys import create_model_keys
from deepfleet.paths import LOCAL_INVENTORY, PROJECT_ROOT, cache_dir
from deepfleet.pki import init_ca

pytestmark = pytest.mark.fleet
# What the test host image has that the runtime's venv needs: removed, so the bundle must bring them.
REMOVED = ("python3-venv", "python3.11-venv", "python3-pip-whl", "python3-setuptools-whl")
TREES = ("/opt/deepfleet", "/etc/deepfleet")
# The files that differ between two hosts installed from one bundle (docs/air-gapped.md lists them).
# each host's own: its name in the gateway config, its TLS certificate and key, and its audit log's
# checkpoint signing key (one per host, so a record signed on one host cannot pass as another's)
HOST_SPECIFIC = ("/etc/deepfleet/gateway.yaml", "/etc/deepfleet/tls/server.crt", "/etc/deepfleet/tls/server.key",
                 "/etc/deepfleet/tls/audit-signing.key")


@dataclass
class OfflineSite:
    fleet: testhosts.TestFleet
    inventory: Path
    bundle: Path
    rebuilt: Path  # the same inventory built again from the first bundle's lock
    resolver: str  # the pinned resolver image: the test host image's tag @ its image ID
    unpinned_refused: str  # what a build naming the resolver image by tag alone said
    refused: str  # the log of a deploy of a tampered copy
    state_after_refusal: list[str]  # what the hosts held of deepfleet's files after it
    api_key: str
    first_deploy: DeployResult

    def deploy(self, **kwargs) -> DeployResult:
        return run_deploy(LOCAL_INVENTORY, env={"DEEPFLEET_HOSTS_FILE": str(self.inventory)}, echo=False, **kwargs)


def on_host(host: testhosts.TestHost, command: str, check: bool = True) -> str:
    return subprocess.run(["docker", "exec", host.container, "sh", "-c", command], capture_output=True, text=True,
                          check=check).stdout


def build(inventory: Path, out: Path, keys: Path, lock: Path | None = None, ok: bool = True) -> str:
    command = [sys.executable, "-m", "deepfleet.cli", "bundle", "build", str(LOCAL_INVENTORY), "--out", str(out),
               "--signing-key-dir", str(keys)] + (["--lock", str(lock)] if lock else [])
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={**os.environ, "DEEPFLEET_HOSTS_FILE": str(inventory)})
    assert (result.returncode == 0) == ok, result.stderr[-3000:]
    return result.stderr


@pytest.fixture(scope="module")
def offline_site(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("offline")
    image = testhosts.ensure_image(cache_dir() / "testhost")
    image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                              text=True, check=True).stdout.strip()
    resolver = f"{image}@{image_id}"  # built here by debootstrap: no registry digest, pinned by its image ID
    fleet = testhosts.TestFleet(root / "hosts")
    try:
        fleet.start(2, image, network="none")
        for host in fleet.hosts:
            on_host(host, f"dpkg --purge {' '.join(REMOVED)} >/dev/null")
        init_ca(root / "pki")
        api_key = create_key(root / "keys.json", "tests")
        model_keys, _ = create_model_keys(root / "model-keys")
        keys = root / "bundle-keys"
        inventory = root / "inventory.json"
        write_local_inventory(inventory, fleet, tiny_model_dir, root / "pki", root / "keys.json",
                              model_keys_dir=str(model_keys.path), bundle_dir=str(root / "bundle"),
                              bundle_trusted_key=str(keys / "bundle-signing.asc"), bundle_host_os="debian-12",
                              bundle_resolver_images={"debian-12": resolver})
        unpinned = build(_with(inventory, root / "unpinned.json", bundle_resolver_images={"debian-12": image}),
                         root / "unpinned", keys, ok=False)
        build(inventory, root / "bundle", keys)
        build(inventory, root / "rebuilt", keys, lock=root / "bundle" / "lock.json")

        tampered = root / "tampered"
        shutil.copytree(root / "bundle", tampered)
        deb = sorted((tampered / "apt" / "debian-12-amd64" / "pool").glob("python3.11-venv_*.deb"))[0]
        deb.write_bytes(deb.read_bytes()[:-1] + b"\0")
        with pytest.raises(DeployError) as refused:
            run_deploy(LOCAL_INVENTORY, env={"DEEPFLEET_HOSTS_FILE": str(_with(inventory, root / "t.json",
                                                                                bundle_dir=str(tampered)))}, echo=False)
        state = [on_host(host, "for p in /opt/deepfleet /etc/deepfleet /etc/apt/apt.conf.d/00deepfleet-bundle; do "
                               "test -e $p && echo present $p; done; dpkg -s python3-venv >/dev/null 2>&1 && "
                               "echo present python3-venv; true") for host in fleet.hosts]

        site = OfflineSite(fleet, inventory, root / "bundle", root / "rebuilt", resolver, unpinned,
                            str(refused.value), state, api_key, None)
        site.first_deploy = site.deploy()
        yield site
    finally:
        fleet.destroy()


def _with(inventory: Path, path: Path, **overrides) -> Path:
    hosts = json.loads(inventory.read_text())["hosts"]
    for _, data in hosts:
        data.update(overrides)
    path.write_text(json.dumps({"hosts": hosts}))
    return path


def test_building_again_from_the_lock_gives_the_same_bytes(offline_site):
    for name in ("bundle.json", "bundle.json.asc", "lock.json", "apt/debian-12-amd64/InRelease"):
        assert (offline_site.rebuilt / name).read_bytes() == (offline_site.bundle / name).read_bytes(), name
    assert len(json.loads((offline_site.bundle / "bundle.json").read_text())["files"]) > 100


def test_the_resolver_image_is_used_pinned_and_recorded_in_the_lock(offline_site):
    tag, image_id = offline_site.resolver.split("@")
    assert f"{tag} is named by tag only" in offline_site.unpinned_refused
    assert f"pin it as {offline_site.resolver}" in offline_site.unpinned_refused
    assert not (offline_site.bundle.parent / "unpinned").exists()
    entry = json.loads((offline_site.bundle / "lock.json").read_text())["os"]["debian-12-amd64"]
    assert (entry["resolver_image"], entry["resolver_image_id"]) == (offline_site.resolver, image_id)


def test_a_changed_deb_is_refused_before_any_host_changes(offline_site):
    assert "apt/debian-12-amd64/pool/python3.11-venv_" in offline_site.refused
    assert "SHA-256 differs from the manifest" in offline_site.refused
    assert "the bundle is refused, no host was changed" in offline_site.refused
    assert offline_site.state_after_refusal == ["", ""]  # no deepfleet directory, apt untouched, nothing installed


def test_both_hosts_serve_a_completion_checked_inside_the_host(offline_site):
    ask = ("import json, ssl, sys, urllib.request\n"
           "request = urllib.request.Request('https://127.0.0.1:8443/v1/chat/completions', json.dumps({'model': "
           "'tiny-deepseek-v3', 'messages': [{'role': 'user', 'content': 'Hi'}], 'max_tokens': 8}).encode(), "
           "{'Authorization': 'Bearer ' + sys.stdin.read().strip(), 'Content-Type': 'application/json'})\n"
           "context = ssl.create_default_context(cafile='/etc/deepfleet/tls/ca.crt')\n"
           "print(urllib.request.urlopen(request, context=context, timeout=60).read().decode())\n")
    assert offline_site.first_deploy.failed_hosts == []
    for host in offline_site.fleet.hosts:
        answer = subprocess.run(["docker", "exec", "-i", host.container, "python3", "-c", ask],
                                input=offline_site.api_key, capture_output=True, text=True, check=True).stdout
        body = json.loads(answer)
        assert body["model"] == "tiny-deepseek-v3" and body["choices"][0]["message"]["content"]


def test_the_bundle_is_the_only_package_source_and_hosts_have_no_network(offline_site):
    for host in offline_site.fleet.hosts:
        assert on_host(host, "ls /sys/class/net").split() == ["lo"]
        policy = on_host(host, "apt-cache policy")
        sources = [line.split()[1] for line in policy.splitlines() if line.strip()[:3].isdigit()
                   and "/var/lib/dpkg/status" not in line]
        assert sources and all(source.startswith("file:/opt/deepfleet/bundle/apt-") for source in sources), policy
        assert "install ok installed" in on_host(host, "dpkg -s python3-venv")


def test_installed_trees_are_identical_except_host_specific_files(offline_site):
    listings = [_tree(host) for host in offline_site.fleet.hosts]
    differing = {path for path in listings[0].keys() | listings[1].keys()
                 if listings[0].get(path) != listings[1].get(path)}
    sealed = {path for path in differing if path.startswith("/etc/deepfleet/keys/") and path.endswith(".cred")}
    assert len(sealed) == 1, sorted(differing)[:40]  # the one KEK, sealed with each host's own credential secret
    assert sorted(differing - sealed) == sorted(HOST_SPECIFIC), sorted(differing)[:40]
    assert len(listings[0]) > 1000  # the venv, the model release, configs: a real tree was compared


_LIST_TREE = r"""
import hashlib, json, os, stat, sys
found = {}
for top in sys.argv[1:]:
    for directory, _, names in os.walk(top):
        for name in names:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
            found[path] = "%o %d:%d %s" % (info.st_mode, info.st_uid, info.st_gid, content)
print(json.dumps(found))
"""


def _tree(host: testhosts.TestHost) -> dict[str, str]:
    """{path: "mode uid:gid sha256" (or "-> target" for links)} of every file under TREES."""
    return json.loads(subprocess.run(["docker", "exec", host.container, "python3", "-c", _LIST_TREE, *TREES],
                                     capture_output=True, text=True, check=True).stdout)


def test_a_second_deploy_changes_nothing(offline_site):
    result = offline_site.deploy()
    assert (result.changed, result.changed_operations) == (0, [])
