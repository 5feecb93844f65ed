"""Vendor package repositories and package installs, for apt and dnf hosts alike.

A role describes a repository once (`PackageRepo`: its signing key's URL, its apt line, its dnf
base URL, all built from the role's one base-URL setting); `add_repo` writes it the way the
host's package manager wants it: apt gets a keyring in /etc/apt/keyrings and a `signed-by` line,
dnf gets a .repo file with `gpgkey=`. `install_packages` installs only what is missing and
refreshes apt's lists only when a repository changed or a package is missing.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File
from pyinfra.facts.rpm import RpmPackages
from pyinfra.operations import apt, files, server

from deepfleet import pgpkeys

from .aptsources import AptSources, source_plan
from .hostos import HostOS

APT_KEYRINGS = "/etc/apt/keyrings"
# The host's own python3 fetches keys, so no curl/wget/gnupg is needed (apt reads .asc keyrings).
# ... and refuses a key whose fingerprint is not pinned (deepfleet/pgpkeys.py, sent as it is).
_FETCH = Path(pgpkeys.__file__).read_text()


@dataclass(frozen=True)
class PackageRepo:
    """One vendor repository, described for both package managers."""

    name: str  # file stem: /etc/apt/sources.list.d/deepfleet-<name>.list, /etc/yum.repos.d/deepfleet-<name>.repo
    title: str  # what it is, for humans
    key_url: str  # the repository's signing key (ASCII-armoured); "" when `keyring` is on the host already
    apt_source: str = ""  # "URL SUITE [COMPONENTS]"; arch and signed-by are added
    dnf_baseurl: str = ""
    dnf_options: dict[str, str] = field(default_factory=lambda: {"gpgcheck": "1"})
    keyring: str = ""  # apt: a keyring the OS already ships (e.g. debian-archive-keyring.gpg)
    key_fingerprints: tuple[str, ...] = ()  # apt: the fingerprints the vendor publishes; another key is refused

    def apt_path(self) -> str:
        return f"/etc/apt/sources.list.d/deepfleet-{self.name}.list"

    def keyring_path(self) -> str:
        return self.keyring or f"{APT_KEYRINGS}/deepfleet-{self.name}.asc"

    def apt_list(self, os: HostOS) -> str:
        """The sources.list.d file's content."""
        return (f"# Written by deepfleet: {self.title}. Edits are overwritten.\n"
                f"deb [arch={os.deb_arch} signed-by={self.keyring_path()}] {self.apt_source}\n")

    def dnf_repo(self) -> str:
        """The yum.repos.d file's content."""
        options = {"baseurl": self.dnf_baseurl, "enabled": "1", **self.dnf_options, "gpgkey": self.key_url}
        lines = [f"# Written by deepfleet: {self.title}. Edits are overwritten.", f"[deepfleet-{self.name}]",
                 f"name={self.title}", *(f"{key}={value}" for key, value in options.items())]
        return "\n".join(lines) + "\n"


@operation()
def download_once(url: str, dest: str, mode: str = "0644", fingerprints: tuple[str, ...] = ()):
    """
    Download an OpenPGP key from `url` to `dest` on the host with its python3, unless `dest` exists.

    + url: http(s):// or file:// URL
    + dest: remote path; written atomically (temporary file, then rename)
    + mode: permissions of the file
    + fingerprints: the key's pinned fingerprints; a key with another one is refused, naming both

    .. code:: python

        download_once(url="https://download.docker.com/linux/debian/gpg", dest="/etc/apt/keyrings/docker.asc")
    """
    if host.get_fact(File, path=dest):
        host.noop(f"{dest} already exists")
        return
    partial = f"{dest}.deepfleet-partial"
    yield StringCommand("install", "-d", "-m", "0755", QuoteString(posixpath.dirname(dest)))
    yield StringCommand("python3", "-c", QuoteString(_FETCH), QuoteString(url), QuoteString(partial),
                        QuoteString(",".join(fingerprints)))
    yield StringCommand("chmod", mode, QuoteString(partial), "&&", "mv", "-f", QuoteString(partial),
                        QuoteString(dest))


def add_repo(repo: PackageRepo, os: HostOS) -> list[OperationMeta]:
    """Configure `repo` on the host; returns the operations whose change means "refresh the lists".

    apt: when another sources file already lists the repository's URI and suite (the OS's stock
    sources, cuda-keyring's, NVIDIA's or Docker's own list), that entry is reused, with missing
    components added in place, and no second entry is written: two entries with different
    Signed-By values make `apt-get update` fail for the whole host (roles/aptsources.py).
    """
    if host.data.get("bundle_dir"):  # air-gapped: the bundle's repository holds every package (roles/bundle.py)
        return []
    if os.family != "debian":
        return [files.put(name=f"{repo.title}: dnf repository", src=io.StringIO(repo.dnf_repo()),
                          dest=f"/etc/yum.repos.d/deepfleet-{repo.name}.repo", user="root", group="root",
                          mode="0644")]
    uri, suite, *components = repo.apt_source.split()
    decision = source_plan(host.get_fact(AptSources), repo.apt_path(), uri, suite, tuple(components))
    if decision.reuse:
        changes = [files.put(name=f"{repo.title}: {' '.join(components)} added to {path}", src=io.StringIO(text),
                             dest=path, user="root", group="root", mode="0644")
                   for path, text in decision.rewritten.items()]
        changes.append(files.file(name=f"{repo.title}: the host's own entry in {decision.reuse.path} is used",
                                  path=repo.apt_path(), present=False))
        return changes
    changes = []
    if not repo.keyring:
        changes.append(download_once(name=f"{repo.title}: signing key", url=repo.key_url, dest=repo.keyring_path(),
                                     fingerprints=repo.key_fingerprints))
    changes.append(files.put(name=f"{repo.title}: apt source", src=io.StringIO(repo.apt_list(os)),
                             dest=repo.apt_path(), user="root", group="root", mode="0644"))
    return changes


def pinned(name: str, version: str, os: HostOS) -> str:
    """A package pinned to `version`, written `name=version` for every package manager
    (`install_packages` turns it into dnf's `name-version`; pyinfra's dnf facts never match that)."""
    return f"{name}={version}"


@operation()
def dnf_install(packages: list[str]):
    """
    `dnf install -y` the packages not installed at their pinned version.

    + packages: `name` or `name=version-release` entries (as `pinned` writes them)
    """
    missing = missing_packages(packages, host.get_fact(RpmPackages) or {})
    if not missing:
        host.noop(f"installed: {', '.join(packages)}")
        return
    yield StringCommand("dnf", "install", "-y", *(package.replace("=", "-", 1) for package in missing))


def missing_packages(packages: list[str], installed: dict) -> list[str]:
    """The `name[=version]` entries not installed (at that version; rpm versions are version-release)."""
    missing = []
    for package in packages:
        name, _, version = package.partition("=")
        versions = installed.get(name) or []
        if not versions or (version and version not in versions):
            missing.append(package)
    return missing


def install_packages(title: str, packages: list[str], os: HostOS,
                     repo_changes: list[OperationMeta] = (), no_recommends: bool = True) -> OperationMeta:
    """Install `packages` (pins as written by `pinned`) where missing.

    apt's lists are refreshed first, but only when a repository just changed or a package is
    missing (decided when the deploy runs), so a converged host runs no `apt-get update`.
    """
    if os.family == "debian":
        def refresh_needed() -> bool:
            return any(op.did_change() for op in repo_changes) or bool(
                missing_packages(packages, host.get_fact(DebPackages) or {}))

        server.shell(name=f"{title}: refresh apt lists (after a repository change, or for missing packages)",
                     commands=["apt-get update -qq"], _if=refresh_needed)
        return apt.packages(name=f"{title}: packages", packages=packages, no_recommends=no_recommends)
    return dnf_install(name=f"{title}: packages", packages=packages)
