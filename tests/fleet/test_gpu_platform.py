"""The host platform (deploys/platform.py) on a real Debian 12 test host without a GPU, over SSH.

What runs for real here: the GPU facts, the NVIDIA roles' clean skip, and the docker role against
a signed apt repository on 127.0.0.1 laid out like Docker's (aptrepo.py): keyring fetched from
the base URL, signed-by source line, `apt-get update` that verifies the signature, packages,
daemon.json, enable/start, restart only when daemon.json changed, zero changes on a re-run, and
`--dry --diff` of one daemon.json setting.

Two stand-ins, because of what this machine cannot have: the repository carries Debian's
docker.io (Docker CE's own packages are not reachable here), so the test sets
`docker_ce_packages: ["docker.io"]`; and dockerd cannot run inside a test host (no nested
engine: ../shared/notes/test-hosts.md), so a systemd drop-in makes docker.service run
`sleep infinity` instead: the role starts, enables and restarts the real unit, and the test
reads its invocation id to see exactly when it was restarted.

The host's apt layout is the stock bookworm one (the deb822 /etc/apt/sources.list.d/debian.sources
of Debian's own images, nothing else): only its URIs point at a signed Debian-style mirror on
127.0.0.1 (aptrepo.py), whose key stands in for Debian's archive key at the same path. The NVIDIA
driver role skips here (no GPU), so its package sources are deployed alone (deploys/driver_sources.py)
and the host's real apt updates from them: Debian's contrib/non-free/non-free-firmware added to the
stock entry, NVIDIA's CUDA repository (laid out like NVIDIA's, signed by the test key) with the
branch pin choosing 570 over a newer 590, and cuda-keyring's own list reused instead of duplicated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepfleet import testhosts
from deepfleet.atomicfile import write_atomic
from deepfleet.deployrun import run_deploy
from deepfleet.paths import LOCAL_INVENTORY, PROJECT_ROOT, cache_dir
from roles.gpu_facts import NvidiaPciDevices, pci_scan_command

from .aptrepo import (RepoServer, SigningKey, build_debian_mirror, build_flat_repo, build_repo, closure, download,
                      dummy_deb)

pytestmark = pytest.mark.fleet
PLATFORM_DEPLOY = PROJECT_ROOT / "deploys" / "platform.py"
DRIVER_SOURCES_DEPLOY = Path(__file__).resolve().parent / "deploys" / "driver_sources.py"
DEBIAN_SOURCES = "/etc/apt/sources.list.d/debian.sources"
# Debian 12's stock deb822 sources (the debian:12 image's), URIs pointing at {mirror}.
STOCK_BOOKWORM = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: {mirror}/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: {mirror}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")
STAND_IN = "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=simple\nExecStart=\nExecStart=/bin/sleep infinity\n"
DAEMON_JSON_DEFAULT = ('{\n  "log-driver": "json-file",\n  "log-opts": {\n    "max-size": "100m",\n'
                       '    "max-file": "3"\n  },\n  "default-shm-size": "1G",\n  "live-restore": true\n}\n')


class PlatformHost:
    def __init__(self, fleet: testhosts.TestFleet, hosts_file: Path, repo_url: str, repo_base: Path,
                 key_fingerprint: str):
        self.fleet, self.hosts_file, self.repo_url, self.repo_base = fleet, hosts_file, repo_url, repo_base
        self.key_fingerprint = key_fingerprint  # the test key stands in for Docker's and NVIDIA's
        self.first_deploy = None

    @property
    def container(self) -> str:
        return self.fleet.hosts[0].container

    def write_inventory(self, path: Path, **overrides) -> Path:
        data = {"docker_enabled": True, "docker_repo_base_url": f"{self.repo_url}/linux",
                "docker_ce_packages": ["docker.io"], "docker_repo_key_fingerprints": [self.key_fingerprint],
                "cuda_repo_key_fingerprints": [self.key_fingerprint], **overrides}
        write_atomic(path, json.dumps({"hosts": self.fleet.inventory_hosts(data)}) + "\n", mode=0o600)
        return path

    def deploy(self, hosts_file: Path | None = None, deploy: Path = PLATFORM_DEPLOY, **kwargs):
        return run_deploy(LOCAL_INVENTORY, deploy, env={"DEEPFLEET_HOSTS_FILE": str(hosts_file or self.hosts_file)},
                          echo=False, **kwargs)

    def sh(self, command: str) -> str:
        return subprocess.run(["docker", "exec", self.container, "sh", "-c", command], capture_output=True,
                              text=True, check=True).stdout

    def docker_invocation(self) -> str:
        return self.sh("systemctl show -p InvocationID --value docker.service").strip()


def _vendor_stand_ins(repo: Path, scratch: Path, key: SigningKey) -> None:
    """Under `repo`: a Debian-style mirror (debian/, debian-security/) with every component, one
    stand-in package where bookworm has it in each; NVIDIA's CUDA repository for Debian 12 (flat,
    key 3bf863cc.pub) offering the open module on branches 570 and 590."""
    scratch.mkdir()
    bookworm = {component: [dummy_deb(scratch, name, version)] for component, (name, version) in zip(COMPONENTS, (
        ("dkms", "3.0.10-8+deb12u1"), ("nvidia-persistenced", "535.216.01-1"), ("nvidia-driver", "535.216.01-1"),
        ("firmware-misc-nonfree", "20230210-5")))}
    build_debian_mirror(repo / "debian", {
        "bookworm": bookworm,
        "bookworm-updates": {c: [] for c in COMPONENTS}}, key)
    build_debian_mirror(repo / "debian-security", {"bookworm-security": {c: [] for c in COMPONENTS}}, key)
    cuda = repo / "compute" / "cuda" / "repos" / "debian12" / "x86_64"
    build_flat_repo(cuda, [dummy_deb(scratch, "nvidia-kernel-open-dkms", version, "nvidia-open-gpu-kernel-modules")
                           for version in ("570.133.20-1", "590.44.01-1")], key)
    (cuda / "3bf863cc.pub").write_text(key.public_armored())


@pytest.fixture(scope="module")
def platform_host(tmp_path_factory):
    root = tmp_path_factory.mktemp("platform")
    image = testhosts.ensure_image(cache_dir() / "testhost")
    debs = download(closure(["docker.io"], image), cache_dir() / "aptrepo" / "debs")
    key = SigningKey(root / "gnupg")
    fleet = testhosts.TestFleet(root / "hosts")
    try:
        repo_base = build_repo(root / "repo", debs, key)
        _vendor_stand_ins(root / "repo", root / "stand-ins", key)
        with RepoServer(root / "repo") as server:
            fleet.start(1, image, name_prefix="p")
            host = PlatformHost(fleet, root / "inventory.json", server.url, repo_base, key.fingerprint)
            keyring = root / "debian-archive-keyring.gpg"
            keyring.write_bytes(key.public_binary())
            subprocess.run(["docker", "cp", str(keyring), f"{host.container}:/usr/share/keyrings/"], check=True)
            (root / "debian.sources").write_text(STOCK_BOOKWORM.format(mirror=server.url))
            subprocess.run(["docker", "cp", str(root / "debian.sources"), f"{host.container}:{DEBIAN_SOURCES}"],
                           check=True)
            host.sh("mkdir -p /etc/systemd/system/docker.service.d && "
                    f"printf '{STAND_IN}' > /etc/systemd/system/docker.service.d/deepfleet-test-stand-in.conf && "
                    "rm -f /etc/apt/sources.list")  # debootstrap's; the stock image has only debian.sources
            host.write_inventory(host.hosts_file)
            host.first_deploy = host.deploy()
            yield host
    finally:
        fleet.destroy()
        key.close()


def test_docker_comes_from_the_signed_local_repository(platform_host):
    host = platform_host
    assert host.first_deploy.failed_hosts == []
    assert host.sh("cat /etc/apt/keyrings/deepfleet-docker.asc") == (host.repo_base / "gpg").read_text()
    assert host.sh("cat /etc/apt/sources.list.d/deepfleet-docker.list").splitlines()[-1] == (
        f"deb [arch=amd64 signed-by=/etc/apt/keyrings/deepfleet-docker.asc] {host.repo_url}/linux/debian "
        "bookworm stable")
    policy = host.sh("apt-cache policy docker.io")
    assert re.search(r"\*\*\* \S+ 500\n\s+500 " + re.escape(f"{host.repo_url}/linux/debian bookworm/stable amd64"),
                     policy), policy
    assert host.sh("dpkg-query -W -f '${Status}' docker.io") == "install ok installed"


def test_daemon_json_is_rendered_and_docker_enabled_and_running(platform_host):
    host = platform_host
    assert host.sh("cat /etc/docker/daemon.json") == DAEMON_JSON_DEFAULT
    assert host.sh("systemctl is-enabled docker.service; systemctl is-active docker.service").split() == [
        "enabled", "active"]


def test_nvidia_roles_skip_cleanly_without_a_device(platform_host):
    host = platform_host
    log = host.first_deploy.log
    for role in ("NVIDIA driver", "CUDA toolkit", "NVIDIA container toolkit"):
        assert f"{role}: skipped, no NVIDIA device on the PCI bus" in log
        assert not [op for op in host.first_deploy.changed_operations if op.startswith(f"{role} |")]
    leftovers = host.sh("ls /etc/modprobe.d /etc/apt/sources.list.d /etc/profile.d 2>/dev/null; true")
    assert not {"deepfleet-blacklist-nouveau.conf", "deepfleet-cuda.list", "deepfleet-cuda.sh",
                "deepfleet-nvidia-container-toolkit.list"} & set(leftovers.split())


def test_gpu_facts_of_a_host_without_gpu(platform_host):
    local = subprocess.run(["sh", "-c", pci_scan_command()], capture_output=True, text=True).stdout.splitlines()
    if NvidiaPciDevices().process(local):
        pytest.skip("this machine has NVIDIA devices, which its test hosts see in /sys")
    facts = ["roles.gpu_facts.NvidiaPciDevices", "roles.gpu_facts.NvidiaSmi", "roles.gpu_facts.NvidiaModuleState",
             "server.Arch"]
    result = subprocess.run([sys.executable, "-m", "pyinfra", "--json", str(LOCAL_INVENTORY), "fact", *facts],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "DEEPFLEET_HOSTS_FILE": str(platform_host.hosts_file)})
    answers = {name: values["p1"] for name, values in json.loads(result.stdout).items()}
    assert answers == {
        "roles.gpu_facts.NvidiaPciDevices": [],
        "roles.gpu_facts.NvidiaSmi": None,
        "roles.gpu_facts.NvidiaModuleState": {"loaded": None, "installed": None, "built": {}, "driver": None,
                                              "running": platform_host.sh("uname -r").strip(), "default": None},
        "server.Arch": platform_host.sh("uname -m").strip(),
    }


def test_verify_passes_a_host_without_gpu_and_changes_nothing(platform_host):
    result = platform_host.deploy(deploy=PROJECT_ROOT / "deploys" / "verify.py", verbosity=1)
    assert (result.changed, result.failed_hosts) == (0, [])
    assert "p1: GPU verification\n  ok    NVIDIA devices on the PCI bus: none: nothing GPU to verify" in result.log
    # the clock, from the host's real time tools: no time daemon can run in a test host (it would need
    # CAP_SYS_TIME, the machine's own clock), so the offset is unknown, which passes while ntp_servers is empty
    assert "p1: clock\n  ok    clock offset: unknown: not synchronised; systemd-timesyncd: " in result.log


def test_second_deploy_reports_no_changes_and_does_not_restart_docker(platform_host):
    before = platform_host.docker_invocation()
    result = platform_host.deploy()
    assert (result.changed, result.changed_operations) == (0, [])
    assert platform_host.docker_invocation() == before


def test_dry_diff_shows_exactly_one_daemon_json_setting(platform_host, tmp_path):
    inventory = platform_host.write_inventory(tmp_path / "inventory.json", docker_log_max_size="50m")
    result = platform_host.deploy(inventory, dry=True, diff=True)
    assert result.changed_operations == ["Docker | Docker daemon config"]
    removed = re.findall(r"^\s*-\s+(\S.*)$", result.log, flags=re.M)
    added = re.findall(r"^\s*\+\s+(\S.*)$", result.log, flags=re.M)
    assert (removed, added) == (['"max-size": "100m",'], ['"max-size": "50m",'])
    assert platform_host.sh("cat /etc/docker/daemon.json") == DAEMON_JSON_DEFAULT  # dry: nothing applied


def test_a_daemon_json_change_restarts_docker_once(platform_host, tmp_path):
    inventory = platform_host.write_inventory(tmp_path / "inventory.json", docker_default_shm_size="2G")
    before = platform_host.docker_invocation()
    changed = platform_host.deploy(inventory)
    assert changed.changed_operations == ["Docker | Docker daemon config", "Docker | Restart docker for its new config"]
    restarted = platform_host.docker_invocation()
    assert restarted != before and '"default-shm-size": "2G"' in platform_host.sh("cat /etc/docker/daemon.json")
    again = platform_host.deploy(inventory)
    assert (again.changed, platform_host.docker_invocation()) == (0, restarted)
    platform_host.deploy()  # back to the module's settings for whatever runs next


def _apt_update(host: PlatformHost) -> str:
    """`apt-get update` on the host; fails the test with apt's words when apt cannot update."""
    result = subprocess.run(["docker", "exec", host.container, "apt-get", "update"], capture_output=True, text=True)
    assert result.returncode == 0 and "W: " not in result.stderr, result.stdout + result.stderr
    return result.stdout


def _deploy_driver_sources(host: PlatformHost, tmp_path: Path, **settings):
    inventory = host.write_inventory(tmp_path / "sources.json",
                                     nvidia_driver_debian_mirror_url=f"{host.repo_url}/debian",
                                     cuda_repo_base_url=f"{host.repo_url}/compute/cuda/repos", **settings)
    return host.deploy(inventory, deploy=DRIVER_SOURCES_DEPLOY)


def test_the_stock_bookworm_layout_still_updates_after_the_platform_deploy(platform_host):
    assert platform_host.first_deploy.failed_hosts == []
    assert platform_host.sh(f"cat {DEBIAN_SOURCES}") == STOCK_BOOKWORM.format(mirror=platform_host.repo_url)
    _apt_update(platform_host)


def test_distro_driver_sources_extend_the_stock_entry_and_apt_updates(platform_host, tmp_path):
    host = platform_host
    first = _deploy_driver_sources(host, tmp_path, nvidia_driver_source="distro", nvidia_driver_branch="535")
    assert first.changed_operations == [
        f"NVIDIA driver sources | Debian contrib non-free non-free-firmware (NVIDIA driver): contrib non-free "
        f"non-free-firmware added to {DEBIAN_SOURCES}"]
    stanzas = host.sh(f"cat {DEBIAN_SOURCES}").split("\n\n")
    assert "Components: main contrib non-free non-free-firmware\n" in stanzas[0]
    assert "Components: main\n" in stanzas[1]  # debian-security: another URI, untouched
    assert "deepfleet-debian-nvidia.list" not in host.sh("ls /etc/apt/sources.list.d")
    _apt_update(host)
    targets = host.sh("apt-get indextargets --format '$(SITE) $(CODENAME) $(COMPONENT)' 'Created-By: Packages'")
    for component in COMPONENTS:
        assert f"{host.repo_url}/debian bookworm {component}" in targets.splitlines()
    for package, component in (("nvidia-persistenced", "contrib"), ("nvidia-driver", "non-free"),
                               ("firmware-misc-nonfree", "non-free-firmware")):
        assert f"{host.repo_url}/debian bookworm/{component}" in host.sh(f"apt-cache policy {package}")
    assert _deploy_driver_sources(host, tmp_path, nvidia_driver_source="distro", nvidia_driver_branch="535").changed == 0


def test_cuda_repo_sources_update_and_the_pin_holds_the_branch(platform_host, tmp_path):
    host = platform_host
    _deploy_driver_sources(host, tmp_path, nvidia_driver_source="cuda_repo", nvidia_driver_branch="570")
    cuda_url = f"{host.repo_url}/compute/cuda/repos/debian12/x86_64/"
    assert host.sh("cat /etc/apt/sources.list.d/deepfleet-cuda.list").splitlines()[-1] == (
        f"deb [arch=amd64 signed-by=/etc/apt/keyrings/deepfleet-cuda.asc] {cuda_url} /")
    _apt_update(host)
    policy = host.sh("apt-cache policy nvidia-kernel-open-dkms")
    assert re.search(r"Candidate: 570\.133\.20-1\n", policy), policy
    unpinned = host.sh("apt-cache -o Dir::Etc::PreferencesParts=/nonexistent policy nvidia-kernel-open-dkms")
    assert re.search(r"Candidate: 590\.44\.01-1\n", unpinned), unpinned  # the pin is what holds 570
    again = _deploy_driver_sources(host, tmp_path, nvidia_driver_source="cuda_repo", nvidia_driver_branch="570")
    assert again.changed == 0


def test_cuda_keyrings_own_list_is_reused_instead_of_a_conflicting_second_entry(platform_host, tmp_path):
    host = platform_host
    cuda_url = f"{host.repo_url}/compute/cuda/repos/debian12/x86_64/"
    host.sh("cp /usr/share/keyrings/debian-archive-keyring.gpg /usr/share/keyrings/cuda-archive-keyring.gpg && "
            f"echo 'deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {cuda_url} /' "
            "> /etc/apt/sources.list.d/cuda-debian12-x86_64.list")  # what cuda-keyring_1.1-1_all.deb installs
    broken = subprocess.run(["docker", "exec", host.container, "apt-get", "update"], capture_output=True, text=True)
    assert broken.returncode != 0 and "Conflicting values set for option Signed-By" in broken.stderr  # both lists
    result = _deploy_driver_sources(host, tmp_path, nvidia_driver_source="cuda_repo", nvidia_driver_branch="570")
    assert "NVIDIA driver sources | NVIDIA CUDA repository: the host's own entry in " \
           "/etc/apt/sources.list.d/cuda-debian12-x86_64.list is used" in result.changed_operations
    assert "deepfleet-cuda.list" not in host.sh("ls /etc/apt/sources.list.d")
    _apt_update(host)
    assert re.search(r"Candidate: 570\.133\.20-1\n", host.sh("apt-cache policy nvidia-kernel-open-dkms"))
