"""OS packages for a bundle: the closure resolved inside a container of the target OS, the .debs
fetched and checked against the hashes apt reported, and a signed flat apt repository.

Resolution runs the target OS's own apt (measured recipe: ../shared/notes/test-hosts.md):
    apt-get update                                   (its own sources + the roles' vendor repositories)
    apt-cache depends --recurse --no-recommends ...  (the whole closure, so any host of that OS can install)
    apt-get download --print-uris                    (URL, size and SHA-256 of each, from signed indexes)
Fetching needs no package manager: each URL is downloaded on the build machine and its SHA-256
compared with what the signed index said, then cached by file name.
The container runs the resolver image only as pinned (`name@sha256:<digest or image ID>`, resolver.py),
started by the image ID that was checked. RHEL-family targets: rpms.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from email.utils import format_datetime
from pathlib import Path

from ..digests import sha256_file
from ..pgpkeys import PinError, check_pinned
from ..progress import byte_progress
from .resolver import ResolverImageError, check_resolver_image
from .signing import BundleSigner
from .spec import OsTarget

_NO_EXTRAS = ["--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"]
_MOUNT = "/deepfleet-resolve"
REPO_FILES = ("Packages", "Packages.gz", "Release", "InRelease", "Release.gpg")


class PackageError(RuntimeError):
    """Packages could not be resolved or fetched; the message names the target, the step and the fix."""


def resolve_closure(target: OsTarget, log=print) -> tuple[list[dict], str]:
    """([{"file", "url", "size", "sha256"}] of every package `target.packages` need, the image ID it ran),
    resolved by the target OS's package manager in a container of that OS (`target.resolver_image`)."""
    if target.family != "debian":
        raise PackageError(f"{target.key}: apt resolves Debian and Ubuntu targets; RHEL-family ones go through "
                           "rpms.resolve_rpm_closure")
    if target.machine != os.uname().machine:
        raise PackageError(
            f"{target.key}: resolving packages for {target.machine} needs a {target.machine} container of that OS, "
            f"and this machine is {os.uname().machine}; build the bundle on a {target.machine} machine")
    if not shutil.which("docker"):
        raise PackageError("docker is not installed: resolving packages runs the target OS's apt in a container")
    try:
        image_id = check_resolver_image(target.resolver_image, target.key)
    except ResolverImageError as exc:
        raise PackageError(str(exc)) from None
    log(f"resolving {len(target.packages)} packages and their dependencies for {target.key} in a "
        f"{target.resolver_image} container (image ID {image_id})")
    with tempfile.TemporaryDirectory(prefix="deepfleet-resolve-") as scratch:
        _stage_sources(target, Path(scratch))
        container = _start_resolver(target, image_id, Path(scratch))
        try:
            _exec(container, target, "mkdir -p /etc/apt/keyrings && cp -r "
                  f"{_MOUNT}/keyrings/. /etc/apt/keyrings/ && cp -r {_MOUNT}/sources/. /etc/apt/sources.list.d/ "
                  "&& apt-get update -qq", "apt-get update")
            names = [spec.split("=")[0] for spec in target.packages]
            depends = _exec(container, target, shlex.join(["apt-cache", "depends", "--recurse", *_NO_EXTRAS,
                                                           *target.packages]), "apt-cache depends")
            closure = {line.strip() for line in depends.splitlines() if line[:1].isalnum()} - set(names)
            wanted = sorted(closure) + sorted(target.packages)
            uris = _exec(container, target, shlex.join(["apt-get", "download", "--print-uris", *wanted]),
                         "apt-get download --print-uris")
        finally:
            subprocess.run(["docker", "rm", "--force", container], capture_output=True)
    return sorted(_parse_uris(uris), key=lambda deb: deb["file"]), image_id


def _stage_sources(target: OsTarget, scratch: Path) -> None:
    """The vendor repositories' apt lines and signing keys, as the resolver mounts them."""
    (scratch / "sources").mkdir()
    (scratch / "keyrings").mkdir()
    for source in target.sources:
        (scratch / "sources" / f"deepfleet-{source.name}.list").write_text(source.apt_list)
        if source.key_url:
            try:
                with urllib.request.urlopen(source.key_url, timeout=30) as response:
                    key = response.read()
                check_pinned(key, source.key_fingerprints, source.key_url)
                (scratch / "keyrings" / f"deepfleet-{source.name}.asc").write_bytes(key)
            except PinError as exc:
                raise PackageError(f"{target.key}: {exc}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise PackageError(f"{target.key}: cannot fetch the signing key of the {source.title} from "
                                   f"{source.key_url} ({exc}); build the bundle on a machine that reaches it, "
                                   "or point the role's *_repo_base_url setting at a mirror") from None


def _start_resolver(target: OsTarget, image_id: str, scratch: Path) -> str:
    """A container of the checked image, by its ID (a tag moved since the check changes nothing)."""
    started = subprocess.run(["docker", "run", "--detach", "--rm", "--label", "deepfleet.bundle-resolver=1",
                              "--volume", f"{scratch}:{_MOUNT}:ro", "--entrypoint", "sleep", image_id,
                              "infinity"], capture_output=True, text=True)
    if started.returncode != 0:
        raise PackageError(f"{target.key}: starting a {target.resolver_image} container failed: "
                           f"{started.stderr.strip()[-300:]}")
    return started.stdout.strip()


def _exec(container: str, target: OsTarget, script: str, step: str) -> str:
    result = subprocess.run(["docker", "exec", "--env", "DEBIAN_FRONTEND=noninteractive", container, "sh", "-c",
                             script], capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-12:])
        raise PackageError(f"{target.key}: {step} in {target.resolver_image} failed:\n{tail}")
    return result.stdout


def _parse_uris(output: str) -> list[dict]:
    debs = []
    for line in output.splitlines():
        if not line.startswith("'"):
            continue
        url, name, size, checksum = shlex.split(line)
        algorithm, _, digest = checksum.partition(":")
        if algorithm != "SHA256":
            raise PackageError(f"apt reported no SHA-256 for {name} ({checksum}); the repository's index is too old")
        debs.append({"file": name, "url": url, "size": int(size), "sha256": digest})
    return debs


def fetch_debs(debs: list[dict], cache: Path, log=None) -> dict[str, Path]:
    """{file: cached path} for `debs`, downloading what the cache lacks; each checked by SHA-256."""
    cache.mkdir(parents=True, exist_ok=True)
    found, missing = {}, []
    for deb in debs:
        path = cache / deb["file"]
        if path.is_file() and path.stat().st_size == deb["size"] and sha256_file(path) == deb["sha256"]:
            found[deb["file"]] = path
        else:
            missing.append(deb)
    if missing:
        with byte_progress(f"Downloading {len(missing)} packages", sum(d["size"] for d in missing), log) as advance:
            for deb in missing:
                found[deb["file"]] = _download(deb, cache, advance)
    return found


def _download(deb: dict, cache: Path, advance) -> Path:
    partial = cache / f".{deb['file']}.partial"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(deb["url"], timeout=60) as response, open(partial, "wb") as out:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
                advance(len(block))
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise PackageError(f"downloading {deb['url']} failed ({exc}); build where the repository is reachable") from None
    if digest.hexdigest() != deb["sha256"]:
        partial.unlink()
        raise PackageError(f"{deb['url']}: SHA-256 {digest.hexdigest()} differs from the signed index's "
                           f"{deb['sha256']}; the mirror served another file, refusing it")
    return partial.rename(cache / deb["file"])


def write_apt_repo(repo: Path, debs: dict[str, Path], signer: BundleSigner, lock_time, link, valid_until) -> None:
    """A flat apt repository in `repo`: pool/*.deb, Packages(.gz), Release signed as InRelease and Release.gpg.

    Every byte follows from the .debs and the lock's times, so the same lock gives the same repository.
    Release carries `Valid-Until`: apt refuses the repository after it (no replay of an old one).
    """
    pool = repo / "pool"
    pool.mkdir(parents=True)
    for name, path in sorted(debs.items()):
        link(path, pool / name)
    if not shutil.which("dpkg-scanpackages"):
        raise PackageError("dpkg-scanpackages is not installed; install it (`apt-get install dpkg-dev`)")
    scan = subprocess.run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=repo,
                          capture_output=True, text=True)
    if scan.returncode != 0:
        raise PackageError(f"indexing {repo} failed: {scan.stderr.strip()[-500:]}")
    (repo / "Packages").write_text(scan.stdout)
    (repo / "Packages.gz").write_bytes(gzip.compress(scan.stdout.encode(), mtime=0))
    lines = ["Origin: deepfleet", "Label: deepfleet bundle", f"Date: {format_datetime(lock_time, usegmt=True)}",
             f"Valid-Until: {format_datetime(valid_until, usegmt=True)}", "SHA256:"]
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    (repo / "Release").write_text("\n".join(lines) + "\n")
    signer.sign(repo / "Release", lock_time, clear=True)
