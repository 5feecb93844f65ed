"""Debian 13 (trixie) for real: a trixie test host over SSH, its stock deb822 sources, apt 3 verifying
with sqv. The platform deploy runs and reruns with zero changes; the NVIDIA driver role's sources for
both driver sources (trixie's non-free driver; NVIDIA's debian13 CUDA repository, whose key file is
8793F200.pub) are deployed alone (no GPU here) and the host's apt updates from them.

Stand-ins as in test_gpu_platform.py: a signed Debian-style mirror and a CUDA-layout repository on
127.0.0.1, whose test key stands in for Debian's archive key (at the stock keyring path) and for
NVIDIA's debian13 key (served as 8793F200.pub). sqv verifying the test key is real; that NVIDIA's
own debian13 key passes sqv is NVIDIA's statement (NVIDIA/cuda-repo-management#39), not tested here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from deepfleet import testhosts
from deepfleet.paths import cache_dir

from .aptrepo import RepoServer, SigningKey, build_debian_mirror, build_flat_repo, dummy_deb
from .test_gpu_platform import COMPONENTS, DEBIAN_SOURCES, PlatformHost, _apt_update, _deploy_driver_sources

pytestmark = pytest.mark.fleet
STOCK_TRIXIE = """Types: deb
# http://snapshot.debian.org/archive/debian/20251117T000000Z
URIs: {mirror}/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp

Types: deb
# http://snapshot.debian.org/archive/debian-security/20251117T000000Z
URIs: {mirror}/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp
"""


def _stand_ins(repo: Path, scratch: Path, key: SigningKey) -> None:
    scratch.mkdir()
    trixie = {component: [dummy_deb(scratch, name, version)] for component, (name, version) in zip(COMPONENTS, (
        ("dkms", "3.2.0-1"), ("nvidia-persistenced", "550.163.01-1"), ("nvidia-driver", "550.163.01-2"),
        ("firmware-misc-nonfree", "20250410-2")))}
    build_debian_mirror(repo / "debian", {"trixie": trixie, "trixie-updates": {c: [] for c in COMPONENTS}}, key)
    build_debian_mirror(repo / "debian-security", {"trixie-security": {c: [] for c in COMPONENTS}}, key)
    cuda = repo / "compute" / "cuda" / "repos" / "debian13" / "x86_64"
    build_flat_repo(cuda, [dummy_deb(scratch, "nvidia-kernel-open-dkms", version, "nvidia-open-gpu-kernel-modules")
                           for version in ("570.195.03-1", "590.44.01-1")], key)
    (cuda / "8793F200.pub").write_text(key.public_armored())


@pytest.fixture(scope="module")
def trixie_host(tmp_path_factory):
    root = tmp_path_factory.mktemp("trixie")
    image = testhosts.ensure_image(cache_dir() / "testhost", suite="trixie")
    key = SigningKey(root / "gnupg")
    fleet = testhosts.TestFleet(root / "hosts")
    try:
        _stand_ins(root / "repo", root / "stand-ins", key)
        with RepoServer(root / "repo") as server:
            fleet.start(1, image, name_prefix="t")
            host = PlatformHost(fleet, root / "inventory.json", server.url, root / "repo", key.fingerprint)
            (root / "debian-archive-keyring.pgp").write_bytes(key.public_binary())
            (root / "debian.sources").write_text(STOCK_TRIXIE.format(mirror=server.url))
            for name, target in (("debian-archive-keyring.pgp", "/usr/share/keyrings/"),
                                 ("debian.sources", DEBIAN_SOURCES)):
                subprocess.run(["docker", "cp", str(root / name), f"{host.container}:{target}"], check=True)
            host.sh("rm -f /etc/apt/sources.list")  # debootstrap's; the stock image has only debian.sources
            host.write_inventory(host.hosts_file, docker_enabled=False)
            host.first_deploy = host.deploy()
            yield host
    finally:
        fleet.destroy()
        key.close()


def test_the_platform_deploys_on_trixie_and_reruns_with_zero_changes(trixie_host):
    host = trixie_host
    assert host.first_deploy.failed_hosts == []
    assert host.sh("cat /etc/os-release").count('VERSION_ID="13"') == 1
    assert "NVIDIA driver: skipped, no NVIDIA device on the PCI bus" in host.first_deploy.log
    again = host.deploy()
    assert (again.changed, again.changed_operations) == (0, [])
    _apt_update(host)  # sqv verifies the mirror's InRelease


def test_trixies_own_driver_sources_extend_the_stock_entry(trixie_host, tmp_path):
    host = trixie_host
    settings = {"nvidia_driver_source": "distro", "nvidia_driver_branch": "550"}
    _deploy_driver_sources(host, tmp_path, **settings)
    assert "Components: main contrib non-free non-free-firmware\n" in host.sh(f"cat {DEBIAN_SOURCES}").split("\n\n")[0]
    _apt_update(host)
    assert f"{host.repo_url}/debian trixie/non-free" in host.sh("apt-cache policy nvidia-driver")
    assert _deploy_driver_sources(host, tmp_path, **settings).changed == 0


def test_nvidias_debian13_repository_updates_with_sqv_and_the_pin_holds_570(trixie_host, tmp_path):
    host = trixie_host
    settings = {"nvidia_driver_source": "cuda_repo", "nvidia_driver_branch": "570"}
    _deploy_driver_sources(host, tmp_path, **settings)
    assert host.sh("cat /etc/apt/keyrings/deepfleet-cuda.asc").startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert "/compute/cuda/repos/debian13/x86_64/ /" in host.sh("cat /etc/apt/sources.list.d/deepfleet-cuda.list")
    _apt_update(host)
    assert re.search(r"Candidate: 570\.195\.03-1\n", host.sh("apt-cache policy nvidia-kernel-open-dkms"))
    assert _deploy_driver_sources(host, tmp_path, **settings).changed == 0
