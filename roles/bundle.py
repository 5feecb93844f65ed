"""The air-gapped path of the site deploy: with `bundle_dir` set, hosts install only from the bundle.

1. `bundle_sources` (first, before base): the bundle is verified on the control machine, once per
   deploy (the signature with `bundle_trusted_key`, every file's SHA-256); a bundle that fails stops
   the deploy while it is still planning, so no host changes. Then, for the host's OS:
       <home>/bundle/apt-<id>/                  its apt repository, pushed resumably (push_tree)
       /etc/apt/keyrings/deepfleet-bundle.asc   the site's trusted copy of the signer's key
       /etc/apt/deepfleet-bundle.list           the one source: deb [signed-by=...] file:<repo> ./
       /etc/apt/apt.conf.d/00deepfleet-bundle   apt's source list and parts moved to deepfleet's, so
                                                sources.list and sources.list.d/* are no longer read
   After a change apt-get update, an upgrade to the bundle's versions, and older repositories go.
   Rocky/RHEL 9 hosts get the bundle's dnf repository the same way (`bundle_dnf_source`):
       <home>/bundle/rpm-<id>/                            the repository (createrepo_c metadata, signed)
       /etc/pki/rpm-gpg/RPM-GPG-KEY-deepfleet-bundle      the signer's key
       /etc/deepfleet/yum.repos.d/deepfleet-bundle.repo   repo_gpgcheck=1: dnf checks repomd.xml.asc with
                                                          that key, and every package against repomd.xml
       /etc/dnf/dnf.conf  reposdir=/etc/deepfleet/yum.repos.d   dnf reads no other repository (dnf.conf(5))
   then `dnf -y --refresh upgrade` to the bundle's versions.
   Vendor repositories are not added (roles/packages.py: add_repo), so nothing fetches a key.
2. `bundle_images` (after docker): image tarballs the host would otherwise pull, pushed and loaded.
3. The runtime and model roles take their inputs from the bundle (roles/offline.py).
"""

from __future__ import annotations

import io
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindDirectories
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

from deepfleet.bundle import BundleError

from .bundle_contents import host_images
from .bundle_push import push_tree
from .common import RoleError, control_path
from .defaults import DEFAULTS
from .gpu_facts import has_nvidia_gpu
from .hostos import HostOS, host_os
from .offline import offline, runtime_image_file, runtime_tarball, the_bundle
from .runtime_container import load_image

KEYRING = "/etc/apt/keyrings/deepfleet-bundle.asc"
SOURCE_LIST = "/etc/apt/deepfleet-bundle.list"
SOURCE_PARTS = "/etc/apt/deepfleet-bundle.list.d"  # kept empty: apt reads no other sources
APT_CONF = "/etc/apt/apt.conf.d/00deepfleet-bundle"
APT_CONF_TEXT = (
    "// Written by deepfleet (roles/bundle.py): an air-gapped host. Packages come only from the\n"
    "// bundle's repository; sources.list and sources.list.d are not read while this file exists.\n"
    f'Dir::Etc::SourceList "{SOURCE_LIST}";\n'
    f'Dir::Etc::SourceParts "{SOURCE_PARTS}";\n'
    'Acquire::Languages "none";\n'
)
UPGRADE = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq "
           "-o Dpkg::Options::=--force-confold upgrade")


def _target_key(os: HostOS) -> str:
    """The bundle's name of the host's OS: "debian-12-amd64"; RHEL-family hosts by major version, as
    `bundle_host_os` names them ("rocky-9-amd64" for Rocky 9.4: one repository serves every 9.x)."""
    version = os.major if os.family == "rhel" else os.version
    return f"{os.id}-{version}-{os.deb_arch}"


@deploy("Air-gapped bundle: package source", data_defaults=DEFAULTS)
def bundle_sources():
    """Verify the bundle, push its apt repository for this host's OS, make it apt's only source."""
    if not offline():
        return
    bundle = the_bundle()
    os = host_os()
    if os.family == "rhel":
        bundle_dnf_source(bundle, os)
        return
    try:
        repo = bundle.apt_repo(_target_key(os))
    except BundleError as exc:
        raise RoleError(f"host {host.name}: {exc}") from None
    repo_files = bundle.files_under(repo)
    remote = f"{host.data.deepfleet_home}/bundle/apt-{repo_files['Release']['sha256'][:16]}"
    pushed = push_tree(name=f"Bundle: {_target_key(os)} packages ({len(repo_files)} files)",
                       src_root=str(bundle.root / repo), files=repo_files, dest_dir=remote, transport="sftp")
    keyring = files.put(name="Bundle: signing key for apt", src=str(control_path(host.data.bundle_trusted_key,
                        "bundle_trusted_key")), dest=KEYRING, user="root", group="root", mode="0644")
    source = files.put(name="Bundle: the one apt source", src=io.StringIO(
        f"# Written by deepfleet (roles/bundle.py): the bundle signed by {bundle.signer}.\n"
        f"deb [arch={os.deb_arch} signed-by={KEYRING}] file:{remote} ./\n"),
        dest=SOURCE_LIST, user="root", group="root", mode="0644")
    parts = files.directory(name="Bundle: no other apt sources", path=SOURCE_PARTS, user="root", group="root",
                            mode="0755")
    conf = files.put(name="Bundle: apt reads only the bundle's source", src=io.StringIO(APT_CONF_TEXT),
                     dest=APT_CONF, user="root", group="root", mode="0644")
    server.shell(name="Bundle: refresh apt, upgrade to the bundle's versions", commands=[UPGRADE],
                 _if=any_changed(pushed, keyring, source, parts, conf))
    parent = f"{host.data.deepfleet_home}/bundle"
    for stale in host.get_fact(FindDirectories, path=parent, maxdepth=1, fname="apt-*") or []:
        if stale != remote:
            files.directory(name=f"Bundle: remove the older repository {stale.rsplit('/', 1)[1]}", path=stale,
                            present=False)


@deploy("Air-gapped bundle: images", data_defaults=DEFAULTS)
def bundle_images():
    """Push and `docker load` the images this host would otherwise pull (after the docker role)."""
    if not offline():
        return
    bundle = the_bundle()
    settings = {key: host.data.get(key) for key in DEFAULTS}
    wanted = [(reference, bundle.image(reference)) for reference in host_images(settings, has_nvidia_gpu())]
    tarball = runtime_tarball(settings)
    if tarball:
        wanted.append(runtime_image_file(bundle, tarball.name))
    for reference, relative in wanted:
        entry = bundle.manifest["files"][relative]
        name = Path(relative).name
        dest_dir = f"{host.data.deepfleet_home}/images/tarball-{entry['sha256'][:16]}"
        push_tree(name=f"Bundle: image {reference} ({entry['size'] / 1e9:.2f} GB)", src_root=str(bundle.root / "images"),
                  files={name: entry}, dest_dir=dest_dir, transport=host.data.model_push_transport)
        load_image(name=f"Bundle: load image {reference}", tarball=f"{dest_dir}/{name}", image=reference)


DNF_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-deepfleet-bundle"
DNF_REPOS_DIR = "/etc/deepfleet/yum.repos.d"
DNF_UPGRADE = "dnf -y -q --refresh upgrade"


def dnf_repo_text(signer: str, remote: str) -> str:
    """The bundle's .repo file: packages only from it, its metadata signature checked (repo_gpgcheck).
    gpgcheck=0: the RPMs carry their vendors' signatures, not the bundle's; each is bound to the
    signed repomd.xml by its SHA-256 in primary.xml, which dnf checks on download."""
    return (f"# Written by deepfleet (roles/bundle.py): the bundle signed by {signer}.\n"
            "[deepfleet-bundle]\nname=deepfleet bundle\n"
            f"baseurl=file://{remote}\nenabled=1\ngpgcheck=0\nrepo_gpgcheck=1\ngpgkey=file://{DNF_KEY}\n"
            "metadata_expire=never\n")


def bundle_dnf_source(bundle, os: HostOS) -> None:
    """Push the bundle's dnf repository for this host's OS and make it dnf's only repository."""
    try:
        repo = bundle.rpm_repo(_target_key(os))
    except BundleError as exc:
        raise RoleError(f"host {host.name}: {exc}") from None
    repo_files = bundle.files_under(repo)
    remote = f"{host.data.deepfleet_home}/bundle/rpm-{repo_files['repodata/repomd.xml']['sha256'][:16]}"
    pushed = push_tree(name=f"Bundle: {_target_key(os)} packages ({len(repo_files)} files)",
                       src_root=str(bundle.root / repo), files=repo_files, dest_dir=remote, transport="sftp")
    key = files.put(name="Bundle: signing key for dnf", src=str(control_path(host.data.bundle_trusted_key,
                    "bundle_trusted_key")), dest=DNF_KEY, user="root", group="root", mode="0644")
    source = files.put(name="Bundle: the one dnf repository", src=io.StringIO(dnf_repo_text(bundle.signer, remote)),
                       dest=f"{DNF_REPOS_DIR}/deepfleet-bundle.repo", user="root", group="root", mode="0644")
    conf = files.line(name="Bundle: dnf reads only the bundle's repository", path="/etc/dnf/dnf.conf",
                      line=r"^reposdir=.*$", replace=f"reposdir={DNF_REPOS_DIR}")
    server.shell(name="Bundle: refresh dnf, upgrade to the bundle's versions", commands=[DNF_UPGRADE],
                 _if=any_changed(pushed, key, source, conf))
    parent = f"{host.data.deepfleet_home}/bundle"
    for stale in host.get_fact(FindDirectories, path=parent, maxdepth=1, fname="rpm-*") or []:
        if stale != remote:
            files.directory(name=f"Bundle: remove the older repository {stale.rsplit('/', 1)[1]}", path=stale,
                            present=False)
