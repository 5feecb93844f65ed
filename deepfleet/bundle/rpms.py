"""OS packages of RHEL-family targets (Rocky, RHEL, AlmaLinux 9) for a bundle: the closure resolved by
dnf inside a container of the target OS, the RPMs fetched and checked against the SHA-256 the
repositories' metadata gives them, and a signed dnf repository (createrepo_c metadata).

Resolution runs the target's own dnf, through its Python API (dnf.readthedocs.io, "Using DNF as a
library"), as the apt side runs apt-cache: every package the roles install, resolved against an
empty install root, so any host of that OS can install them whatever it already holds
(weak dependencies left out, as apt's --no-recommends). It prints, per RPM, the file name, the
URL, the size and the checksum of the repository's metadata; the RPMs are then downloaded on the
build machine (debs.fetch_debs: the same check, the same cache by file name).

    rpm/<os>-<version>-<arch>/Packages/*.rpm
    rpm/<os>-<version>-<arch>/repodata/repomd.xml (+ .asc)   createrepo_c, no sqlite databases, every
                                                            timestamp the lock's time: same lock, same bytes
dnf checks repomd.xml.asc against the bundle key (`repo_gpgcheck=1`), and through repomd.xml every
package's checksum; roles/bundle.py writes that .repo file. The container image of the OS cannot
be run on the machines deepfleet is developed on (no registry): the resolver's commands follow
dnf's documentation and are tested against its recorded output; the repository and the install
from it are tested with Debian's own createrepo_c and dnf (tests/bundle/test_rpms.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from .debs import PackageError, _exec, _start_resolver
from .resolver import ResolverImageError, check_resolver_image
from .signing import BundleSigner
from .spec import OsTarget

# Run inside the container by its python3 (dnf's own interpreter). argv: releasever, then packages.
RESOLVE_SCRIPT = r"""
import json, sys, tempfile
import dnf, hawkey
base = dnf.Base()
base.conf.installroot = tempfile.mkdtemp()   # empty: the whole closure, not what this image holds
base.conf.releasever = sys.argv[1]
base.conf.install_weak_deps = False
base.conf.reposdir = ["/etc/yum.repos.d"]    # the image's repositories and the roles' vendor ones
base.read_all_repos()
base.fill_sack(load_system_repo=False)
for spec in sys.argv[2:]:
    base.install(spec.replace("=", "-", 1))
base.resolve()
out = []
for pkg in base.transaction.install_set:
    kind, digest = pkg.chksum
    out.append({"file": pkg.location.rsplit("/", 1)[-1], "url": pkg.remote_location(), "size": pkg.downloadsize,
                "checksum_type": hawkey.chksum_name(kind),
                "sha256": digest.hex()})
print(json.dumps(sorted(out, key=lambda p: p["file"])))
"""


def resolve_rpm_closure(target: OsTarget, log=print) -> tuple[list[dict], str]:
    """([{"file", "url", "size", "sha256"}] of every RPM `target.packages` need, the image ID that ran),
    resolved by dnf in a container of the target OS (`target.resolver_image`, pinned)."""
    if target.machine != os.uname().machine:
        raise PackageError(f"{target.key}: resolving packages for {target.machine} needs a {target.machine} "
                           f"container of that OS, and this machine is {os.uname().machine}")
    if not shutil.which("docker"):
        raise PackageError("docker is not installed: resolving packages runs the target OS's dnf in a container")
    try:
        image_id = check_resolver_image(target.resolver_image, target.key)
    except ResolverImageError as exc:
        raise PackageError(str(exc)) from None
    log(f"resolving {len(target.packages)} packages and their dependencies for {target.key} in a "
        f"{target.resolver_image} container (image ID {image_id})")
    with tempfile.TemporaryDirectory(prefix="deepfleet-resolve-") as scratch:
        stage_dnf_sources(target, Path(scratch))
        container = _start_resolver(target, image_id, Path(scratch))
        try:
            _exec(container, target, "cp /deepfleet-resolve/sources/*.repo /etc/yum.repos.d/ 2>/dev/null; true",
                  "adding the vendor repositories")
            output = _exec(container, target, " ".join(["python3", "-c", shlex.quote(RESOLVE_SCRIPT),
                                                         shlex.quote(target.version.split(".")[0]),
                                                         *map(shlex.quote, target.packages)]), "dnf resolve")
        finally:
            subprocess.run(["docker", "rm", "--force", container], capture_output=True)
    return parse_resolved(output, target), image_id


def stage_dnf_sources(target: OsTarget, scratch: Path) -> None:
    """The roles' vendor repositories as .repo files (dnf fetches and checks each `gpgkey=` itself)."""
    (scratch / "sources").mkdir()
    for source in target.sources:
        (scratch / "sources" / f"deepfleet-{source.name}.repo").write_text(source.apt_list)


def parse_resolved(output: str, target: OsTarget) -> list[dict]:
    """The resolver's JSON: refused when a package's metadata gives no SHA-256 (sha1/md5 repositories)."""
    rpms = []
    for entry in json.loads(output.strip().splitlines()[-1]):
        if entry.get("checksum_type") != "sha256":
            raise PackageError(f"{target.key}: the repository gives {entry['file']} no SHA-256 checksum "
                               f"({entry.get('checksum_type')}); use a mirror with sha256 metadata")
        rpms.append({key: entry[key] for key in ("file", "url", "size", "sha256")})
    return rpms


def write_dnf_repo(repo: Path, rpms: dict[str, Path], signer: BundleSigner, lock_time, link) -> None:
    """A dnf repository in `repo`: Packages/*.rpm, createrepo_c metadata with every timestamp the lock's
    time, repodata/repomd.xml signed (detached, ASCII-armoured: repomd.xml.asc, what repo_gpgcheck reads)."""
    packages = repo / "Packages"
    packages.mkdir(parents=True)
    stamp = lock_time.timestamp()
    for name, path in sorted(rpms.items()):
        link(path, packages / name)
        os.utime(packages / name, (stamp, stamp))  # createrepo_c writes each file's mtime (<time file=>)
    if not shutil.which("createrepo_c"):
        raise PackageError("createrepo_c is not installed; install it (`apt-get install createrepo-c`, or "
                           "`dnf install createrepo_c`)")
    revision = str(int(lock_time.timestamp()))
    made = subprocess.run(["createrepo_c", "--quiet", "--no-database", "--revision", revision,
                           "--set-timestamp-to-revision", "--workers", "1", str(repo)], capture_output=True, text=True)
    if made.returncode != 0:
        raise PackageError(f"createrepo_c {repo} failed: {made.stderr.strip()[-500:]}")
    signer.sign(repo / "repodata" / "repomd.xml", lock_time)
