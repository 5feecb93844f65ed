"""A bundle's dnf repository, made by write_dnf_repo with Debian's createrepo_c and the real bundle
signing key, installed from offline by Debian's dnf (4.14, the dnf of RHEL 9's generation) into an
empty install root, through the .repo file roles/bundle.py writes: the signature is checked
(repo_gpgcheck), a tampered or unsigned repository is refused. The RPM is a small one rpmbuild makes
here; a Rocky image cannot run here (no registry), so the resolver's side is checked against dnf's
API output it would print (parse_resolved).
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from deepfleet.bundle.build import copy_file
from deepfleet.bundle.debs import PackageError
from deepfleet.bundle.rpms import parse_resolved, write_dnf_repo
from deepfleet.bundle.spec import OsTarget
from roles.bundle import dnf_repo_text

pytestmark = pytest.mark.skipif(not all(shutil.which(tool) for tool in ("rpmbuild", "createrepo_c", "dnf")),
                                reason="needs rpmbuild, createrepo_c and dnf (make host-tools installs them)")
LOCK_TIME = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
SPEC = """Name: deepfleet-probe
Version: 1.0
Release: 1
Summary: a package for the bundle's dnf repository test
License: MIT
BuildArch: noarch
AutoReqProv: no
%description
probe
%install
mkdir -p %{buildroot}/usr/share/deepfleet-probe
echo hello > %{buildroot}/usr/share/deepfleet-probe/hello
%files
/usr/share/deepfleet-probe/hello
"""


@pytest.fixture(scope="module")
def probe_rpm(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("rpmbuild")
    (top / "probe.spec").write_text(SPEC)
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top}", str(top / "probe.spec")], check=True,
                   capture_output=True)
    return next(top.glob("RPMS/noarch/deepfleet-probe-*.rpm"))


def _dnf_install(repo: Path, key: Path, root: Path) -> subprocess.CompletedProcess:
    """`dnf install` offline into `root` with the role's .repo text, its key path pointed at `key`."""
    repos = root.parent / f"{root.name}-repos.d"
    repos.mkdir()
    text = dnf_repo_text("the test signer", str(repo)).replace("/etc/pki/rpm-gpg/RPM-GPG-KEY-deepfleet-bundle", str(key))
    (repos / "deepfleet-bundle.repo").write_text(text)
    cache = root.parent / f"{root.name}-cache"
    try:
        return subprocess.run(["dnf", "-y", "-q", f"--installroot={root}", "--releasever=9",
                               f"--setopt=reposdir={repos}", f"--setopt=cachedir={cache}", "--disableplugin=*",
                               "install", "deepfleet-probe"], capture_output=True, text=True, timeout=120)
    finally:  # librepo checks repo_gpgcheck through a gpg-agent of its own keyring, which outlives dnf
        for keyring in cache.glob("*/pubring"):
            subprocess.run(["gpgconf", "--homedir", str(keyring), "--kill", "gpg-agent"], capture_output=True)


def test_dnf_installs_offline_from_the_signed_repository(probe_rpm, signer, tmp_path):
    repo = tmp_path / "rpm" / "rocky-9-amd64"
    write_dnf_repo(repo, {probe_rpm.name: probe_rpm}, signer, LOCK_TIME, copy_file)
    assert (repo / "repodata" / "repomd.xml.asc").read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    assert not list((repo / "repodata").glob("*.sqlite*"))  # no databases: the bytes follow from the RPMs
    installed = _dnf_install(repo, signer.public_key_path, tmp_path / "root")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (tmp_path / "root/usr/share/deepfleet-probe/hello").read_text() == "hello\n"


def test_the_same_rpms_and_lock_give_the_same_repository(probe_rpm, signer, tmp_path):
    for name in ("a", "b"):
        write_dnf_repo(tmp_path / name, {probe_rpm.name: probe_rpm}, signer, LOCK_TIME, copy_file)
        time.sleep(1.1)  # a build a second later: no clock may leak into the bytes (gzip headers, file mtimes)
    files = {path.relative_to(tmp_path / "a"): path.read_bytes() for path in (tmp_path / "a").rglob("*") if path.is_file()}
    assert files == {path.relative_to(tmp_path / "b"): path.read_bytes()
                     for path in (tmp_path / "b").rglob("*") if path.is_file()}


def test_a_tampered_or_unsigned_repository_is_refused(probe_rpm, signer, tmp_path):
    repo = tmp_path / "repo"
    write_dnf_repo(repo, {probe_rpm.name: probe_rpm}, signer, LOCK_TIME, copy_file)
    repomd = repo / "repodata" / "repomd.xml"
    original = repomd.read_bytes()
    repomd.write_bytes(original.replace(b"<revision>", b"<revision>9"))
    tampered = _dnf_install(repo, signer.public_key_path, tmp_path / "root1")
    assert tampered.returncode != 0 and not (tmp_path / "root1/usr/share/deepfleet-probe").exists()
    repomd.write_bytes(original)
    (repo / "repodata" / "repomd.xml.asc").unlink()
    unsigned = _dnf_install(repo, signer.public_key_path, tmp_path / "root2")
    assert unsigned.returncode != 0 and not (tmp_path / "root2/usr/share/deepfleet-probe").exists()


def test_the_resolvers_output_is_read_and_a_repository_without_sha256_refused():
    target = OsTarget("rocky", "9.4", "rhel", "x86_64", "amd64", "rockylinux:9@sha256:" + "a" * 64, ("python3.11",))
    url = "https://dl.rockylinux.org/pub/rocky/9/AppStream/x86_64/os/Packages/p/python3.11-3.11.7-1.el9.x86_64.rpm"
    entry = {"file": "python3.11-3.11.7-1.el9.x86_64.rpm", "url": url, "size": 26781, "checksum_type": "sha256",
             "sha256": "b" * 64}
    assert parse_resolved("Last metadata expiration check: 0:00:01 ago\n" + json.dumps([entry]), target) == [
        {"file": entry["file"], "url": url, "size": 26781, "sha256": "b" * 64}]
    with pytest.raises(PackageError, match="no SHA-256 checksum"):
        parse_resolved(json.dumps([{**entry, "checksum_type": "sha1"}]), target)
