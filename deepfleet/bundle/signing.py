"""The bundle signing key: one OpenPGP key (Ed25519) signs the bundle's manifest and its apt
repositories' Release files, so hosts' apt and the operator's `deepfleet bundle verify` check the
same key.

The key lives in a GnuPG home on the build machine (`<state>/bundle-keys/gnupg`, 0700) with its
public half exported beside it (`bundle-signing.asc`): that file is what an air-gapped site
trusts. Signatures carry a creation time; deepfleet sets it (gpg --faked-system-time) to the lock's
time, and Ed25519 signatures are deterministic, so the same lock signs to the same bytes.
Verification needs only `gpgv` (in every Debian and Ubuntu, apt depends on it).
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PUBLIC_KEY_FILE = "bundle-signing.asc"
_USER_ID = "deepfleet bundle signing key"


class SigningError(RuntimeError):
    """A signature could not be made or does not verify; the message says which file and why."""


@dataclass(frozen=True)
class BundleSigner:
    """An existing bundle signing key directory."""

    path: Path

    @property
    def gnupg_home(self) -> Path:
        return self.path / "gnupg"

    @property
    def public_key_path(self) -> Path:
        return self.path / PUBLIC_KEY_FILE

    def fingerprint(self) -> str:
        return self._key_fields("fpr")[9]

    def created(self) -> datetime.datetime:
        """When the key was made: signatures cannot be older than their key."""
        return datetime.datetime.fromtimestamp(int(self._key_fields("pub")[5]), datetime.timezone.utc)

    def _key_fields(self, record: str) -> list[str]:
        for line in self._gpg("--with-colons", "--list-keys").splitlines():
            fields = line.split(":")
            if fields[0] == record:
                return fields
        raise SigningError(f"no key in {self.gnupg_home}; remove {self.path} and build again to make a new one")

    def sign(self, path: Path, at: datetime.datetime, clear: bool = False) -> Path:
        """Sign `path` as of `at` (not before the key's creation); writes `<path>.asc`, or with `clear`
        InRelease-style `<dir>/InRelease` (clear-signed) beside a detached `<dir>/Release.gpg`."""
        when = max(at, self.created()).strftime("%Y%m%dT%H%M%S!")
        options = ["--faked-system-time", when, "--armor", "--digest-algo", "SHA512"]
        if clear:
            self._gpg(*options, "--clearsign", "-o", str(path.with_name("InRelease")), str(path))
            self._gpg(*options, "--detach-sign", "-o", str(path.with_name("Release.gpg")), str(path))
            return path.with_name("InRelease")
        signature = path.with_name(path.name + ".asc")
        self._gpg(*options, "--detach-sign", "-o", str(signature), str(path))
        return signature

    def _gpg(self, *args: str) -> str:
        return _run(["gpg", "--batch", "--yes", "--quiet", "--no-tty", "--pinentry-mode", "loopback",
                     "--passphrase", "", *args], {"GNUPGHOME": str(self.gnupg_home)}, "gpg")

    def close(self) -> None:
        """Stop the gpg-agent this key's home started (it would outlive the build otherwise)."""
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(self.gnupg_home)},
                       capture_output=True)


def ensure_signer(path: Path, log=print) -> BundleSigner:
    """The signing key in `path`, created (Ed25519, no expiry) on first use."""
    signer = BundleSigner(Path(path))
    if signer.public_key_path.exists():
        return signer
    _require("gpg", "gnupg")
    signer.gnupg_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(signer.path, 0o700)
    os.chmod(signer.gnupg_home, 0o700)
    signer._gpg("--quick-gen-key", _USER_ID, "ed25519", "sign", "never")
    public = signer._gpg("--armor", "--export")
    tmp = signer.public_key_path.with_suffix(".tmp")
    tmp.write_text(public)
    tmp.rename(signer.public_key_path)
    log(f"created the bundle signing key {signer.fingerprint()} in {signer.path}; an air-gapped site trusts "
        f"{signer.public_key_path} (carry it apart from the bundles, compare the fingerprint)")
    return signer


def dearmor(armored: str) -> bytes:
    """The binary key(s) of an ASCII-armoured OpenPGP block."""
    lines = armored.strip().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP PUBLIC KEY BLOCK"))
    except StopIteration:
        raise SigningError("not an ASCII-armoured OpenPGP public key (no BEGIN PGP PUBLIC KEY BLOCK line); "
                           "use the signer's bundle-signing.asc") from None
    body = []
    for line in lines[start + 1:]:
        if line.startswith(("=", "-----END")):
            break
        if ":" in line or not line.strip():  # armour headers and the blank line after them
            continue
        body.append(line.strip())
    return base64.b64decode("".join(body))


def verify_detached(data: Path, signature: Path, trusted_key: Path) -> str:
    """Check `signature` over `data` with the one trusted public key; returns the signer's fingerprint.
    SigningError naming the file when it does not verify (or is signed by another key)."""
    return verify_detached_bytes(Path(data).read_bytes(), Path(signature).read_bytes(), trusted_key,
                                 Path(data).name, Path(signature).name)


def verify_detached_bytes(data: bytes, signature: bytes, trusted_key: Path, data_name: str,
                          signature_name: str) -> str:
    """`verify_detached` over bytes already in memory: gpgv checks a private copy of exactly these
    bytes, so what the caller then parses is what was verified, whatever happens on disk meanwhile."""
    _require("gpgv", "gpgv")
    if not Path(trusted_key).is_file():
        raise SigningError(f"the trusted bundle key {trusted_key} does not exist; copy the signer's "
                           f"{PUBLIC_KEY_FILE} there (from the build machine's <state>/bundle-keys/)")
    with tempfile.TemporaryDirectory(prefix="deepfleet-gpgv-") as scratch:
        keyring, data_copy, signature_copy = (Path(scratch) / name for name in ("trusted.gpg", "data", "data.asc"))
        try:
            keyring.write_bytes(dearmor(Path(trusted_key).read_text()))
        except SigningError as exc:
            raise SigningError(f"the trusted key {trusted_key} is {exc}") from None
        data_copy.write_bytes(data)
        signature_copy.write_bytes(signature)
        result = subprocess.run(["gpgv", "--status-fd", "1", "--keyring", str(keyring), str(signature_copy),
                                 str(data_copy)], capture_output=True, text=True)
    valid = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("[GNUPG:] VALIDSIG")]
    if result.returncode != 0 or not valid:
        reason = "it is signed by another key" if "NO_PUBKEY" in result.stdout else "the signature does not match"
        raise SigningError(f"{data_name}: signature {signature_name} does not verify with the trusted key "
                           f"{trusted_key} ({reason}); the bundle was changed or signed by someone else")
    return valid[0]


def _require(tool: str, package: str) -> None:
    if not shutil.which(tool):
        raise SigningError(f"{tool} is not installed; install it (`apt-get install {package}`)")


def _run(command: list[str], env: dict, what: str) -> str:
    _require(command[0], "gnupg")
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    if result.returncode != 0:
        raise SigningError(f"{what} failed: {result.stderr.strip()[-800:]}")
    return result.stdout
