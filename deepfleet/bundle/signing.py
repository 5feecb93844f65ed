"""The bundle signing key: one OpenPGP key (Ed25519) signs the bundle's manifest and its apt
repositories' Release files, so hosts' apt and the operator's `deepfleet bundle verify` check the
same key.

The key lives in a GnuPG home on the build machine (`<state>/bundle-keys/gnupg`, 0700) with its
public half exported beside it (`bundle-signing.asc`): that file is what an air-gapped site
trusts. Signatures carry a creation time; deepfleet sets it (gpg --faked-system-time) to the lock's
time, and Ed25519 signatures are deterministic, so the same lock signs to the same bytes.
Verification needs only `gpgv` (in every Debian and Ubuntu, apt depends on it).

The secret key follows the rule of the project's other private keys (deepfleet/keyfiles.py): made
while DEEPFLEET_KEY_PASSPHRASE is set, it is sealed under that passphrase, and using it then needs
the variable. gpg gets the passphrase through a private pipe (--passphrase-fd), never in its argv
or environment, and the home's gpg-agent keeps no copy (cache TTL 0). The key expires
(KEY_VALID_DAYS after it was made, or as asked): a bundle is built only while the key outlives the
bundle's own expiry, since hosts' apt refuses a signature whose key has expired. Extend the same
key with `gpg --quick-set-expire` (the next build exports the longer-lived public key; sites copy
it again) or move the directory aside to make a new one.
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

from ..keyfiles import PASSPHRASE_VARIABLE

PUBLIC_KEY_FILE = "bundle-signing.asc"
_USER_ID = "deepfleet bundle signing key"
KEY_VALID_DAYS = 730  # a new key expires two years after it was made (bundles are valid 365 days)
_AGENT_CONF = "default-cache-ttl 0\nmax-cache-ttl 0\n"  # gpg-agent forgets the passphrase at once


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

    def expires(self) -> datetime.datetime | None:
        """When the key expires (None: a key made before keys had an expiry)."""
        stamp = self._key_fields("pub")[6]
        return datetime.datetime.fromtimestamp(int(stamp), datetime.timezone.utc) if stamp else None

    def check_valid_until(self, until: datetime.datetime) -> None:
        """SigningError naming the fix when the key has expired, or expires before `until` (the
        bundle's own expiry: hosts' apt would refuse the bundle's repositories from then on)."""
        expires = self.expires()
        if expires is None:
            return
        fix = (f"extend it: `GNUPGHOME={self.gnupg_home} gpg --quick-set-expire {self.fingerprint()} 2y` "
               f"(then build again and copy the re-exported {self.public_key_path} to every site's "
               f"bundle_trusted_key), or move {self.path} aside to make a new key (sites then trust its "
               f"{PUBLIC_KEY_FILE})")
        now = datetime.datetime.now(datetime.timezone.utc)
        if expires <= now:
            raise SigningError(f"the bundle signing key {self.fingerprint()} expired on {_day(expires)}; {fix}")
        if expires < until:
            raise SigningError(f"the bundle signing key {self.fingerprint()} expires on {_day(expires)}, before "
                               f"this bundle does ({_day(until)}); {fix}")

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
        """gpg on this home, the passphrase (DEEPFLEET_KEY_PASSPHRASE, or none) written to a pipe only
        gpg reads: it appears in no argv and no environment."""
        _require("gpg", "gnupg")
        passphrase = os.environ.get(PASSPHRASE_VARIABLE, "")
        read_end, write_end = os.pipe()
        try:
            with os.fdopen(write_end, "w") as pipe:
                pipe.write(passphrase)  # far below a pipe's buffer: written before gpg starts
            result = subprocess.run(["gpg", "--batch", "--yes", "--quiet", "--no-tty", "--pinentry-mode", "loopback",
                                     "--passphrase-fd", str(read_end), *args], capture_output=True, text=True,
                                    env=_gnupg_env(self.gnupg_home), pass_fds=(read_end,))
        finally:
            os.close(read_end)
        if result.returncode == 0:
            return result.stdout
        if "No passphrase given" in result.stderr:
            raise SigningError(f"the bundle signing key in {self.path} is passphrase-protected: set "
                               f"{PASSPHRASE_VARIABLE} to its passphrase")
        if "Bad passphrase" in result.stderr:
            raise SigningError(f"{PASSPHRASE_VARIABLE} does not open the bundle signing key in {self.path} "
                               "(wrong passphrase)")
        raise SigningError(f"gpg failed: {result.stderr.strip()[-800:]}")

    def close(self) -> None:
        """Stop the gpg-agent this key's home started (it would outlive the build otherwise)."""
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=_gnupg_env(self.gnupg_home), capture_output=True)


def ensure_signer(path: Path, log=print, valid_days: int = KEY_VALID_DAYS,
                  valid_until: datetime.datetime | None = None) -> BundleSigner:
    """The signing key in `path`, created on first use (Ed25519, expiring `valid_days` on, sealed under
    DEEPFLEET_KEY_PASSPHRASE when set); with `valid_until`, SigningError unless it lasts that long."""
    signer = BundleSigner(Path(path))
    if signer.public_key_path.exists():
        _write_agent_conf(signer)
        _export_public(signer)  # after `gpg --quick-set-expire` the public key carries the new expiry
        if signer.expires() is None:
            log(f"the bundle signing key {signer.fingerprint()} never expires; give it an expiry with `GNUPGHOME="
                f"{signer.gnupg_home} gpg --quick-set-expire {signer.fingerprint()} 2y`")
    else:
        if valid_days < 1:
            raise SigningError(f"a bundle signing key must be valid for at least a day (asked {valid_days} days)")
        signer.gnupg_home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(signer.path, 0o700)
        os.chmod(signer.gnupg_home, 0o700)
        _write_agent_conf(signer)
        signer._gpg("--quick-gen-key", _USER_ID, "ed25519", "sign", f"seconds={valid_days * 86400}")
        _export_public(signer)
        sealed = "sealed under DEEPFLEET_KEY_PASSPHRASE" if os.environ.get(PASSPHRASE_VARIABLE) else "no passphrase"
        log(f"created the bundle signing key {signer.fingerprint()} in {signer.path} ({sealed}, expires "
            f"{_day(signer.expires())}); an air-gapped site trusts {signer.public_key_path} (carry it apart "
            "from the bundles, compare the fingerprint)")
    if valid_until is not None:
        try:
            signer.check_valid_until(valid_until)
        except SigningError:
            signer.close()
            raise
    return signer


def _write_agent_conf(signer: BundleSigner) -> None:
    conf = signer.gnupg_home / "gpg-agent.conf"
    if not conf.exists() or conf.read_text() != _AGENT_CONF:
        conf.write_text(_AGENT_CONF)
        subprocess.run(["gpgconf", "--reload", "gpg-agent"], capture_output=True, env=_gnupg_env(signer.gnupg_home))


def _export_public(signer: BundleSigner) -> None:
    public = signer._gpg("--armor", "--export")
    if signer.public_key_path.exists() and signer.public_key_path.read_text() == public:
        return
    tmp = signer.public_key_path.with_suffix(".tmp")
    tmp.write_text(public)
    tmp.rename(signer.public_key_path)


def _gnupg_env(home: Path) -> dict[str, str]:
    """The environment for GnuPG's tools on `home`, without the passphrase variable."""
    env = {name: value for name, value in os.environ.items() if name != PASSPHRASE_VARIABLE}
    return {**env, "GNUPGHOME": str(home)}


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


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
    for status, what in (("EXPKEYSIG", "expired"), ("REVKEYSIG", "was revoked")):
        if f"[GNUPG:] {status}" in result.stdout:  # gpgv exits 0 on these; apt refuses them, and so do we
            raise SigningError(f"{data_name}: the signing key {what} (as the trusted key {trusted_key} says); "
                               f"if the signer extended it, copy their new {PUBLIC_KEY_FILE} to {trusted_key}, "
                               "else build a new bundle with a current key")
    if result.returncode != 0 or not valid:
        reason = "it is signed by another key" if "NO_PUBKEY" in result.stdout else "the signature does not match"
        raise SigningError(f"{data_name}: signature {signature_name} does not verify with the trusted key "
                           f"{trusted_key} ({reason}); the bundle was changed or signed by someone else")
    return valid[0]


def _require(tool: str, package: str) -> None:
    if not shutil.which(tool):
        raise SigningError(f"{tool} is not installed; install it (`apt-get install {package}`)")


