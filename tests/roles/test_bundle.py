"""The air-gapped path of the site deploy, planned against recorded facts (tests/roles/factplan.py).

The bundles here are small and signed with a real key (tests/conftest.py); the real install of a
real bundle on hosts without network is tests/fleet/test_bundle.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from deepfleet.bundle import verified_once
from deepfleet.bundle.wheels import bundle_wheelhouse
from deepfleet.modelkeys import load_model_keys
from deepfleet.modelpack import encrypt_model
from deepfleet.paths import SITE_DEPLOY
from roles.bundle import APT_CONF, APT_CONF_TEXT, SOURCE_LIST, bundle_images, bundle_sources
from roles.common import RoleError
from roles.docker import docker
from roles.runtime import runtime
from tests.conftest import make_bundle

from .factplan import changed, find, load_case, plan, with_facts

DEB = "apt/debian-12-amd64/pool/python3-venv_3.11.2-1+b1_amd64.deb"
WHEEL = "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"
NOTHING_STAGED = {"roles.bundle_push.StagedTree": {"*": {"complete": None, "staged": {}}},
                  "files.FindDirectories": {"*": []}}


@pytest.fixture
def bundle(tmp_path, signer, control_data):
    """A signed bundle with Debian 12's repository, a wheelhouse, the toolkit's test image and the
    control data's model, encrypted; the data to use it."""
    deps = {WHEEL: hashlib.sha256(b"a wheel").hexdigest()}
    entry = {"python": "3.11", "machine": "x86_64", "glibc": "2.36", "extras": ["transformers"],
             "requirement": "deepfleet-runtime[transformers]", "deps": deps,
             "runtime": {"file": "deepfleet_runtime-0.1.0-py3-none-any.whl", "sha256": "r", "source_digest": "f" * 16}}
    wheelhouse = bundle_wheelhouse(tmp_path / "b", entry)
    files = {DEB: b"a deb", "apt/debian-12-amd64/Release": b"Origin: deepfleet\n",
             f"wheels/{wheelhouse.deps_dir.name}/{WHEEL}": b"a wheel",
             f"wheels/{wheelhouse.deps_dir.name}/.manifest.json": (json.dumps(deps, indent=1, sort_keys=True) + "\n").encode(),
             f"wheels/runtime-{'f' * 16}/deepfleet_runtime-0.1.0-py3-none-any.whl": b"runtime",
             "images/nvidia_cuda_12.8.1-base-ubuntu24.04.tar": b"an image",
             "images/nvcr.io_nvidia_k8s_cuda-sample_vectoradd-cuda12.5.0.tar": b"verify's image"}
    release = tmp_path / "release"
    manifest = encrypt_model(Path(control_data["model_source"]), release, "tiny-deepseek-v3",
                             load_model_keys(Path(control_data["model_keys_dir"])), log=lambda _: None)
    files.update({f"models/{manifest.release_name}/{path.relative_to(release)}": path.read_bytes()
                  for path in release.rglob("*") if path.is_file()})
    lock = {"models": {"tiny-deepseek-v3": {"release": manifest.release, "dir": f"models/{manifest.release_name}",
                                            "manifest_sha256": "-"}},
            "os": {"debian-12-amd64": {"packages": ["python3"], "resolver_image": "debian:12", "debs": []}},
            "wheelhouses": {"cp311-x86_64-glibc2.36-cpu-transformers": entry},
            "images": {"nvidia/cuda:12.8.1-base-ubuntu24.04": {"id": "sha256:1", "sha256": "x",
                                                                "file": "images/nvidia_cuda_12.8.1-base-ubuntu24.04.tar"},
                       "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0": {
                           "id": "sha256:2", "sha256": "y", "file": "images/nvcr.io_nvidia_k8s_cuda-sample_vectoradd-cuda12.5.0.tar"}}}
    root = make_bundle(tmp_path / "b", signer, files, lock)
    return {"bundle_dir": str(root), "bundle_trusted_key": str(signer.public_key_path)}


def _release_id(bundle: dict) -> str:
    manifest = json.loads((Path(bundle["bundle_dir"]) / "bundle.json").read_text())
    return manifest["files"]["apt/debian-12-amd64/Release"]["sha256"][:16]


def test_the_bundles_repository_becomes_the_only_apt_source(bundle, control_data):
    ops = plan(with_facts(load_case("debian12-nogpu"), **NOTHING_STAGED), bundle_sources, {**control_data, **bundle})
    remote = f"/opt/deepfleet/bundle/apt-{_release_id(bundle)}"
    push = find(ops, "debian-12-amd64 packages")
    assert push.change == "yes"
    staging = f"/opt/deepfleet/bundle/.apt-{_release_id(bundle)}.partial"
    assert push.shell()[1] == f"install -d -m 0700 -o admin {staging} {staging}/pool"  # the SSH user writes
    assert any("sha256sum --check" in command for command in push.shell())
    assert push.shell()[-1] == f"rm -rf {remote} && mv {staging} {remote}"
    source = find(ops, "the one apt source").uploads()[SOURCE_LIST]
    assert source.splitlines()[1] == f"deb [arch=amd64 signed-by=/etc/apt/keyrings/deepfleet-bundle.asc] file:{remote} ./"
    assert find(ops, "apt reads only").uploads()[APT_CONF] == APT_CONF_TEXT
    assert 'Dir::Etc::SourceParts "/etc/apt/deepfleet-bundle.list.d"' in APT_CONF_TEXT
    assert find(ops, "refresh apt, upgrade").change == "conditional"


def test_a_pushed_repository_is_not_sent_again(bundle, control_data):
    manifest = json.loads((Path(bundle["bundle_dir"]) / "bundle.json").read_text())["files"]
    complete = {path.split("apt/debian-12-amd64/", 1)[1]: entry["sha256"] for path, entry in manifest.items()
                if path.startswith("apt/debian-12-amd64/")}
    facts = with_facts(load_case("debian12-nogpu"), **{**NOTHING_STAGED, "roles.bundle_push.StagedTree": {
        "*": {"complete": complete, "staged": {}}}})
    push = find(plan(facts, bundle_sources, {**control_data, **bundle}), "debian-12-amd64 packages")
    assert (push.change, push.notes) == ("no", [f"/opt/deepfleet/bundle/apt-{_release_id(bundle)} holds these 2 files"])


def test_a_changed_file_stops_the_deploy_while_planning(bundle, control_data):
    deb = Path(bundle["bundle_dir"]) / DEB
    deb.write_bytes(b"a dex")
    with pytest.raises(RoleError) as error:
        plan(with_facts(load_case("debian12-nogpu"), **NOTHING_STAGED), SITE_DEPLOY, {**control_data, **bundle})
    assert "the bundle is refused, no host was changed" in str(error.value)
    assert f"{DEB}: SHA-256 differs from the manifest" in str(error.value)


def test_a_host_whose_os_the_bundle_lacks_is_told_which_it_holds(bundle, control_data):
    with pytest.raises(RoleError, match=r"holds no packages for ubuntu-22.04-amd64 \(it holds: debian-12-amd64\)"):
        plan(with_facts(load_case("ubuntu2204-2xa100"), **NOTHING_STAGED), bundle_sources, {**control_data, **bundle})
    with pytest.raises(RoleError, match=r"holds no packages for rocky-9-amd64 \(it holds: debian-12-amd64\)"):
        plan(with_facts(load_case("rocky9-8xh100"), **NOTHING_STAGED), bundle_sources, {**control_data, **bundle})


def test_a_rocky_host_gets_the_bundles_dnf_repository_as_its_only_one(tmp_path, signer, control_data):
    """dnf.conf(5): `reposdir` lists the only directories dnf reads .repo files from; repo_gpgcheck makes
    dnf check repomd.xml's detached signature with gpgkey (the real install: tests/bundle/test_rpms.py)."""
    rpm = "rpm/rocky-9-amd64/Packages/python3.11-3.11.7-1.el9.x86_64.rpm"
    root = make_bundle(tmp_path / "rb", signer, {rpm: b"an rpm", "rpm/rocky-9-amd64/repodata/repomd.xml": b"<repomd/>",
                                                 "rpm/rocky-9-amd64/repodata/repomd.xml.asc": b"sig"},
                       {"os": {"rocky-9-amd64": {"packages": ["python3.11"], "resolver_image": "rockylinux:9",
                                                   "rpms": []}}})
    data = {**control_data, "bundle_dir": str(root), "bundle_trusted_key": str(signer.public_key_path)}
    ops = plan(with_facts(load_case("rocky9-8xh100"), **NOTHING_STAGED), bundle_sources, data)
    manifest = json.loads((root / "bundle.json").read_text())["files"]
    remote = f"/opt/deepfleet/bundle/rpm-{manifest['rpm/rocky-9-amd64/repodata/repomd.xml']['sha256'][:16]}"
    staging = remote.replace("/rpm-", "/.rpm-") + ".partial"
    assert find(ops, "rocky-9-amd64 packages (3 files)").shell()[-1] == f"rm -rf {remote} && mv {staging} {remote}"
    repo = find(ops, "the one dnf repository").uploads()["/etc/deepfleet/yum.repos.d/deepfleet-bundle.repo"]
    lines = repo.splitlines()
    assert lines[1] == "[deepfleet-bundle]" and f"baseurl=file://{remote}" in lines
    assert {"enabled=1", "gpgcheck=0", "repo_gpgcheck=1", "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-deepfleet-bundle"} \
        <= set(lines)
    assert list(find(ops, "signing key for dnf").uploads()) == ["/etc/pki/rpm-gpg/RPM-GPG-KEY-deepfleet-bundle"]
    assert "reposdir=/etc/deepfleet/yum.repos.d" in " ".join(find(ops, "dnf reads only").shell())
    assert find(ops, "upgrade to the bundle's versions").shell() == ["dnf -y -q --refresh upgrade"]


def test_vendor_repositories_are_not_added_offline(bundle, control_data):
    data = {**control_data, **bundle, "docker_enabled": True}
    offline_ops = plan(load_case("debian12-nogpu"), docker, data)
    online_ops = plan(load_case("debian12-nogpu"), docker, {**control_data, "docker_enabled": True})
    assert [op.name for op in online_ops if "Docker CE repository" in op.name] != []
    assert [op.name for op in offline_ops if "Docker CE repository" in op.name] == []
    assert "apt-get update -qq" in find(offline_ops, "refresh apt lists").shell()[0]


def test_images_the_host_would_pull_are_pushed_and_loaded(bundle, control_data):
    facts = with_facts(load_case("debian12-nogpu"), **NOTHING_STAGED)
    gpu_case = load_case("ubuntu2204-2xa100")
    facts["roles.gpu_facts.NvidiaPciDevices"] = gpu_case["roles.gpu_facts.NvidiaPciDevices"]
    ops = plan(facts, bundle_images, {**control_data, **bundle})
    load = find(ops, "load image nvidia/cuda:12.8.1-base-ubuntu24.04")
    assert load.change == "yes" and "docker load --quiet --input /opt/deepfleet/images/tarball-" in load.shell()[0]
    verify_image = find(ops, "load image nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0")  # deploys/verify.py runs it
    assert verify_image.change == "yes" and "docker load --quiet --input" in verify_image.shell()[0]
    no_gpu = plan(with_facts(load_case("debian12-nogpu"), **NOTHING_STAGED), bundle_images, {**control_data, **bundle})
    assert changed(no_gpu) == []


def test_the_site_deploy_takes_packages_wheels_and_model_from_the_bundle(bundle, control_data, wheelhouse):
    ops = plan(with_facts(load_case("debian12-nogpu"), **NOTHING_STAGED), SITE_DEPLOY, {**control_data, **bundle})
    assert changed(ops)[0] == "Air-gapped bundle: package source | Bundle: debian-12-amd64 packages (2 files)"
    assert wheelhouse.requests == []  # nothing built on the control machine
    deps = find(ops, "Runtime dependency wheels (1)")
    assert [c["upload"].rsplit("/", 1)[1] for c in deps.commands if isinstance(c, dict)] == [WHEEL, ".deepfleet-complete.json"]
    release = json.loads((Path(bundle["bundle_dir"]) / "lock.json").read_text())["models"]["tiny-deepseek-v3"]["release"]
    assert find(ops, f"Model tiny-deepseek-v3@{release}").change == "yes"  # the bundle's release, not a new one


def _checks(op) -> str:
    """The host-side `sha256sum --check` input of a push_files operation."""
    return next(c for c in op.commands if isinstance(c, str) and "sha256sum --check" in c)


def test_a_wheel_swapped_after_the_bundle_verified_is_refused_by_the_signed_hash(bundle, control_data, wheelhouse):
    root = Path(bundle["bundle_dir"])
    verified_once(root, Path(bundle["bundle_trusted_key"]))  # the deploy has checked the bundle ...
    signed = json.loads((root / "bundle.json").read_text())["files"]
    runtime_wheel = f"wheels/runtime-{'f' * 16}/deepfleet_runtime-0.1.0-py3-none-any.whl"
    (root / runtime_wheel).write_bytes(b"an unsigned wheel, installed as root")  # ... then bundle_dir changes
    ops = plan(with_facts(load_case("debian12-nogpu"), **NOTHING_STAGED), SITE_DEPLOY, {**control_data, **bundle})
    check = _checks(find(ops, "deepfleet-runtime wheel"))
    assert signed[runtime_wheel]["sha256"] in check  # the host refuses what differs from the signed bytes
    assert hashlib.sha256(b"an unsigned wheel, installed as root").hexdigest() not in check


def test_a_wheel_added_to_the_wheelhouse_after_verification_is_refused(bundle, control_data, wheelhouse):
    root = Path(bundle["bundle_dir"])
    verified_once(root, Path(bundle["bundle_trusted_key"]))
    deps_dir = next((root / "wheels").glob("deps-*"))
    (deps_dir / "evil-1.0-py3-none-any.whl").write_bytes(b"evil")
    listed = json.loads((deps_dir / ".manifest.json").read_text())
    listed["evil-1.0-py3-none-any.whl"] = hashlib.sha256(b"evil").hexdigest()
    (deps_dir / ".manifest.json").write_text(json.dumps(listed))
    with pytest.raises(RoleError, match="evil-1.0-py3-none-any.whl is not in the signed manifest"):
        plan(with_facts(load_case("debian12-nogpu"), **NOTHING_STAGED), SITE_DEPLOY, {**control_data, **bundle})
