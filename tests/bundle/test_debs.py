"""The apt side of a bundle: apt's answers parsed, packages checked on download, a signed flat
repository that apt on an air-gapped host accepts (tests/fleet/test_bundle.py installs from one)."""

from __future__ import annotations

import datetime
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from deepfleet.bundle.build import copy_file
from deepfleet.bundle.debs import PackageError, _parse_uris, fetch_debs, resolve_closure, write_apt_repo
from deepfleet.bundle.signing import verify_detached
from deepfleet.bundle.spec import OsTarget

WHEN = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.timezone.utc)


def _deb(directory: Path, name: str, version: str) -> Path:
    """A real (tiny) .deb built with dpkg-deb."""
    tree = directory / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                             "Maintainer: tests <t@example.invalid>\nDescription: test package\n")
    (tree / "usr/share/doc" / name).mkdir(parents=True)
    (tree / "usr/share/doc" / name / "README").write_text(name)
    out = directory / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)], check=True, capture_output=True)
    return out


def test_apt_print_uris_lines_become_lock_entries():
    output = ("'http://deb.debian.org/debian/pool/main/c/ca-certificates/ca-certificates_20230311%2bdeb12u1_all.deb' "
              "ca-certificates_20230311+deb12u1_all.deb 155260 SHA256:0d5f44\nReading package lists...\n")
    assert _parse_uris(output) == [{
        "file": "ca-certificates_20230311+deb12u1_all.deb", "size": 155260, "sha256": "0d5f44",
        "url": "http://deb.debian.org/debian/pool/main/c/ca-certificates/ca-certificates_20230311%2bdeb12u1_all.deb"}]
    with pytest.raises(PackageError, match="no SHA-256 for x.deb"):
        _parse_uris("'http://m/x.deb' x.deb 1 MD5Sum:abc\n")


def test_the_repository_is_the_same_bytes_from_the_same_debs_and_time(tmp_path, signer):
    debs = {path.name: path for path in (_deb(tmp_path, "alpha", "1.0"), _deb(tmp_path, "beta", "2.1"))}
    until = WHEN + datetime.timedelta(days=365)
    write_apt_repo(tmp_path / "one", debs, signer, WHEN, copy_file, until)
    write_apt_repo(tmp_path / "two", debs, signer, WHEN, copy_file, until)
    for name in ("Packages", "Packages.gz", "Release", "InRelease", "Release.gpg"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    packages = (tmp_path / "one" / "Packages").read_text()
    assert "Package: alpha\n" in packages and "Filename: pool/beta_2.1_all.deb\n" in packages
    release = (tmp_path / "one" / "Release").read_text()
    assert "Date: Sat, 28 Nov 2026 12:00:00 GMT" in release
    assert "Valid-Until: Sun, 28 Nov 2027 12:00:00 GMT" in release  # apt refuses the repository after it
    assert f" {hashlib.sha256(packages.encode()).hexdigest()} {len(packages)} Packages\n" in release
    assert verify_detached(tmp_path / "one" / "Release", tmp_path / "one" / "Release.gpg", signer.public_key_path)


def test_a_download_that_differs_from_the_signed_index_is_refused(tmp_path):
    served = tmp_path / "served.deb"
    served.write_bytes(b"what the mirror sent")
    entry = {"file": "x_1_all.deb", "url": served.as_uri(), "size": 20, "sha256": "0" * 64}
    with pytest.raises(PackageError, match="differs from the signed index's"):
        fetch_debs([entry], tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written stays in the cache
    good = {**entry, "sha256": hashlib.sha256(served.read_bytes()).hexdigest()}
    assert fetch_debs([good], tmp_path / "cache")["x_1_all.deb"].read_bytes() == served.read_bytes()


def _target(**changes) -> OsTarget:
    fields = {"os_id": "debian", "version": "12", "family": "debian", "machine": "x86_64", "deb_arch": "amd64",
              "resolver_image": "deepfleet-bundle-tests:no-such-image", "packages": ("python3",)}
    return OsTarget(**{**fields, **changes})


def test_targets_that_cannot_be_resolved_here_say_what_would_run():
    with pytest.raises(PackageError) as rhel:
        resolve_closure(_target(os_id="rocky", version="9", family="rhel", resolver_image="rockylinux:9"))
    assert "rpms.resolve_rpm_closure" in str(rhel.value)
    with pytest.raises(PackageError, match="needs a aarch64 container"):
        resolve_closure(_target(machine="aarch64", deb_arch="arm64"))


@pytest.mark.skipif(not shutil.which("docker"), reason="the resolver image is looked up in this machine's Docker")
def test_a_resolver_image_named_by_tag_only_is_refused_before_anything_runs(monkeypatch):
    started = []
    monkeypatch.setattr("deepfleet.bundle.debs._stage_sources", lambda *args: started.append(args))
    with pytest.raises(PackageError, match="deepfleet-bundle-tests:no-such-image is named by tag only"):
        resolve_closure(_target())
    with pytest.raises(PackageError, match=f"pins deepfleet-bundle-tests:no-such-image to sha256:{'0' * 64}"):
        resolve_closure(_target(resolver_image=f"deepfleet-bundle-tests:no-such-image@sha256:{'0' * 64}"))
    assert started == []  # no key fetched, no container started
