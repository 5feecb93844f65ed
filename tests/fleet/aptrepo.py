"""A signed apt repository served on 127.0.0.1: the stand-in for a vendor repository or its mirror.

Recipe from ../shared/notes/test-hosts.md: the packages' dependency closure (minus what the test
host image already holds) is downloaded once with this machine's apt and cached; the repository
is laid out like Docker's (`<root>/linux/debian/dists/bookworm/stable/binary-amd64`, key at
`<root>/linux/debian/gpg`), indexed with dpkg-scanpackages, and its Release signed (InRelease
and Release.gpg) by a key made for this test session. An HTTP server on 127.0.0.1 serves it to
test hosts (they share the loopback network), so nothing leaves the machine while tests run.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import subprocess
import threading
from email.utils import formatdate
from pathlib import Path

SUITE, COMPONENT, ARCH = "bookworm", "stable", "amd64"
_NO_EXTRAS = ["--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"]


TOOLS = {"apt-get": "apt", "apt-cache": "apt", "dpkg-scanpackages": "dpkg-dev", "gpg": "gnupg"}


def _run(command: list[str], **kwargs) -> str:
    if not shutil.which(command[0]):
        raise RuntimeError(f"{command[0]} is not installed; `apt-get install {TOOLS.get(command[0], command[0])}` "
                           "(the signed test repository needs apt, dpkg-dev and gnupg)")
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed: {result.stderr.strip()[-1500:]}")
    return result.stdout


def closure(packages: list[str], image: str) -> list[str]:
    """`packages` and everything they depend on that the test host image does not have yet."""
    names = _run(["apt-cache", "depends", "--recurse", *_NO_EXTRAS, *packages])
    wanted = {line.strip() for line in names.splitlines() if line[:1].isalnum()}
    installed = set(_run(["docker", "run", "--rm", image, "dpkg-query", "-W", "-f", "${Package}\\n"]).split())
    return sorted(wanted - installed)


def download(packages: list[str], cache: Path) -> list[Path]:
    """The .debs of `packages`, downloaded once into `cache` with this machine's apt sources."""
    cache.mkdir(parents=True, exist_ok=True)
    have = {path.name.split("_")[0] for path in cache.glob("*.deb")}
    missing = [name for name in packages if name not in have]
    if missing:
        _run(["apt-get", "download", *missing], cwd=cache)
    return sorted(path for path in cache.glob("*.deb") if path.name.split("_")[0] in packages)


class SigningKey:
    """A throwaway GnuPG home with one signing key; `close()` stops its agent and removes it."""

    def __init__(self, home: Path):
        self.home = home
        home.mkdir(mode=0o700, parents=True)
        self._gpg("--quick-gen-key", "deepfleet test repository <repo@deepfleet.invalid>", "ed25519", "sign", "1d")

    def _gpg(self, *args: str) -> str:
        return _run(["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "", *args],
                    env={**os.environ, "GNUPGHOME": str(self.home)})

    def public_armored(self) -> str:
        return self._gpg("--armor", "--export")

    @property
    def fingerprint(self) -> str:
        """The key's fingerprint (what the roles' *_repo_key_fingerprints settings pin)."""
        listing = self._gpg("--with-colons", "--fingerprint")
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def public_binary(self) -> bytes:
        """The public key as a binary keyring (what /usr/share/keyrings/*.gpg files are)."""
        return subprocess.run(["gpg", "--batch", "--export"], env={**os.environ, "GNUPGHOME": str(self.home)},
                              capture_output=True, check=True).stdout

    def sign(self, release: Path) -> None:
        self._gpg("--clearsign", "-o", str(release.with_name("InRelease")), str(release))
        self._gpg("--armor", "--detach-sign", "-o", str(release.with_name("Release.gpg")), str(release))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(self.home)},
                       capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


def build_repo(root: Path, debs: list[Path], key: SigningKey, distro: str = "debian") -> Path:
    """Lay out and sign a repository like Docker's under `root`; returns its base (`<root>/linux/<distro>`)."""
    base = root / "linux" / distro
    pool = base / "pool"
    pool.mkdir(parents=True)
    for deb in debs:
        shutil.copy(deb, pool)
    binary = base / "dists" / SUITE / COMPONENT / f"binary-{ARCH}"
    binary.mkdir(parents=True)
    packages = _run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=base)
    (binary / "Packages").write_text(packages)
    (binary / "Packages.gz").write_bytes(gzip.compress(packages.encode(), mtime=0))
    dist = base / "dists" / SUITE
    lines = ["Origin: deepfleet-test", f"Suite: {SUITE}", f"Codename: {SUITE}", f"Architectures: {ARCH}",
             f"Components: {COMPONENT}", f"Date: {formatdate(usegmt=True)}", "SHA256:"]
    for path in (binary / "Packages", binary / "Packages.gz"):
        data = path.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {path.relative_to(dist)}")
    (dist / "Release").write_text("\n".join(lines) + "\n")
    key.sign(dist / "Release")
    (base / "gpg").write_text(key.public_armored())
    return base


class RepoServer:
    """Serves `root` over HTTP on 127.0.0.1 (a free port) from a thread, for a `with` block."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "RepoServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def dummy_deb(out_dir: Path, name: str, version: str, source: str | None = None) -> Path:
    """A tiny real .deb (no files) named like a vendor's package, for resolver and pin checks."""
    root = out_dir / f"{name}_{version}"
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    control = [f"Package: {name}", f"Version: {version}", "Architecture: all", "Maintainer: deepfleet tests <t@x.invalid>",
               f"Description: stand-in for {name}"] + ([f"Source: {source}"] if source else [])
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    deb = out_dir / f"{name}_{version}_all.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)])
    shutil.rmtree(root)
    return deb


def _release(directory: Path, files: list[Path], key: SigningKey, fields: list[str]) -> None:
    lines = ["Origin: deepfleet-test", *fields, f"Date: {formatdate(usegmt=True)}", "SHA256:"]
    for path in files:
        data = path.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {path.relative_to(directory)}")
    (directory / "Release").write_text("\n".join(lines) + "\n")
    key.sign(directory / "Release")


def build_flat_repo(base: Path, debs: list[Path], key: SigningKey) -> Path:
    """A signed flat repository (`deb URL /`), laid out like NVIDIA's CUDA and toolkit repositories."""
    (base / "pool").mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy(deb, base / "pool")
    packages = _run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=base)
    (base / "Packages").write_text(packages)
    (base / "Packages.gz").write_bytes(gzip.compress(packages.encode(), mtime=0))
    _release(base, [base / "Packages", base / "Packages.gz"], key, [f"Architectures: {ARCH} all"])
    return base


def build_debian_mirror(base: Path, suites: dict[str, dict[str, list[Path]]], key: SigningKey) -> Path:
    """A signed Debian-style archive: `suites` maps suite -> component -> its .debs (components may be empty)."""
    for suite, components in suites.items():
        dist = base / "dists" / suite
        indexes = []
        for component, debs in components.items():
            pool = base / "pool" / component
            pool.mkdir(parents=True, exist_ok=True)
            for deb in debs:
                shutil.copy(deb, pool)
            binary = dist / component / f"binary-{ARCH}"
            binary.mkdir(parents=True, exist_ok=True)
            text = _run(["dpkg-scanpackages", "--multiversion", f"pool/{component}", "/dev/null"], cwd=base)
            (binary / "Packages").write_text(text)
            (binary / "Packages.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
            indexes += [binary / "Packages", binary / "Packages.gz"]
        _release(dist, indexes, key, [f"Suite: {suite}", f"Codename: {suite}", f"Architectures: {ARCH} all",
                                      f"Components: {' '.join(components)}"])
    return base
