"""Operations that move files to hosts without re-hashing them on every run or printing secrets."""

from __future__ import annotations

import io
import json
import posixpath
import secrets
import shlex
import subprocess
import time
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, QuoteString, StringCommand, operation
from pyinfra.api.exceptions import OperationError
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.facts.files import File, Sha256File
from pyinfra.facts.server import User

from deepfleet.digests import sha256_file
from deepfleet.remote import ssh_argv
from deepfleet.progress import rate

from .facts import JsonFile

MARKER = ".deepfleet-complete.json"


@operation()
def push_files(files: dict[str, str], manifest: dict[str, str], dest_dir: str,
               user: str = "root", group: str = "root"):
    """
    Copy a set of files into `dest_dir`, unless its completion marker already lists them.

    + files: {relative name: local path}
    + manifest: {relative name: sha256}, the files' hashes, computed once on the control side
    + dest_dir: remote directory (content-addressed by the caller, e.g. ``deps-<digest>``)
    + user, group: owner of the directory and files

    The marker is written last, after the host checked every file's SHA-256, so a directory
    with a marker is complete and verified; one without is re-sent. The host never re-hashes
    files on later runs: the marker (a small JSON read) decides.

    .. code:: python

        push_files(files={"a.whl": "/cache/a.whl"}, manifest={"a.whl": "3f.."}, dest_dir="/opt/x")
    """
    marker = posixpath.join(dest_dir, MARKER)
    if host.get_fact(JsonFile, path=marker) == manifest:
        host.noop(f"{dest_dir} already holds these {len(files)} files")
        return
    directories = sorted({posixpath.dirname(posixpath.join(dest_dir, name)) for name in files})
    yield StringCommand("install", "-d", "-m", "0755", *[QuoteString(d) for d in directories])
    for name, local_path in sorted(files.items()):
        dest = posixpath.join(dest_dir, name)
        yield FileUploadCommand(local_path, dest, remote_temp_filename=host.get_temp_filename(dest))
    checks = [QuoteString(f"{manifest[name]}  {name}") for name in sorted(files)]
    yield StringCommand("cd", QuoteString(dest_dir), "&&", "printf", "'%s\\n'", *checks, "|",
                        "sha256sum", "--check", "--quiet", "--strict")
    marker_body = io.StringIO(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    yield FileUploadCommand(marker_body, marker, remote_temp_filename=host.get_temp_filename(marker))
    yield StringCommand("chown", "-R", f"{user}:{group}", QuoteString(dest_dir))
    yield StringCommand("chmod", "-R", "u=rwX,g=rX,o=rX", QuoteString(dest_dir))


@operation()
def secret_file(src: str, dest: str, user: str = "root", group: str = "root", mode: str = "0600"):
    """
    Upload a file whose content must never be shown (a private key): compared by SHA-256, never
    diffed, and staged in a fresh private directory so no other user can read it in transit.

    + src: local path
    + dest: remote path; its directory should already be closed to other users
    + user, group, mode: ownership and permissions of the remote file

    .. code:: python

        secret_file(src="pki/hosts/h1/server.key", dest="/etc/deepfleet/tls/server.key",
                    user="root", group="deepfleet", mode="0640")
    """
    if host.get_fact(Sha256File, path=dest) != sha256_file(src):
        staging = f"/tmp/deepfleet-secret-{secrets.token_hex(8)}"  # unguessable, so not pre-creatable
        yield StringCommand("mkdir", "-m", "0700", staging, _sudo=False)
        yield FileUploadCommand(src, dest, remote_temp_filename=f"{staging}/upload")
        yield StringCommand("rm", "-rf", staging, _sudo=False)
        yield StringCommand("chown", f"{user}:{group}", QuoteString(dest))
        yield StringCommand("chmod", mode, QuoteString(dest))
        return
    current = host.get_fact(File, path=dest) or {}
    if (current.get("user"), current.get("group")) != (user, group):
        yield StringCommand("chown", f"{user}:{group}", QuoteString(dest))
    if current.get("mode") != int(mode[-3:]):
        yield StringCommand("chmod", mode, QuoteString(dest))
    if (current.get("user"), current.get("group"), current.get("mode")) == (user, group, int(mode[-3:])):
        host.noop(f"{dest} is up to date")


@operation()
def sealed_secret(src: str, dest: str, credential: str):
    """
    Upload a secret and store it on the host only sealed with systemd's encrypted credentials
    (`systemd-creds encrypt`: the host's TPM2 where one exists, else its credential secret); the
    plaintext passes through a fresh private directory in memory (/dev/shm) and is removed at once.

    + src: local path
    + dest: remote path of the sealed file (root 0400); kept when it exists (its name says what it holds)
    + credential: the name sealed into it (systemd-creds refuses to decrypt it under another)

    .. code:: python

        sealed_secret(src="model-keys/model-kek-ab12.key", dest="/etc/deepfleet/keys/model-kek-ab12.cred",
                      credential="model-kek-ab12.key")
    """
    if host.get_fact(File, path=dest):
        host.noop(f"{dest} is sealed on the host")
        return
    # memory, unguessable, not pre-creatable; pyinfra's @docker connector copies files with `docker cp`,
    # which cannot write into a tmpfs mount, so there the staging directory is on /tmp (test hosts only)
    memory = "/tmp" if host.connector_cls.__name__ == "DockerConnector" else "/dev/shm"
    staging = f"{memory}/deepfleet-secret-{secrets.token_hex(8)}"
    partial = f"{dest}.partial"
    yield StringCommand("mkdir", "-m", "0700", staging, _sudo=False)
    yield FileUploadCommand(src, f"{staging}/plain", remote_temp_filename=f"{staging}/upload")
    yield StringCommand("systemd-creds", "encrypt", f"--name={credential}", QuoteString(f"{staging}/plain"),
                        QuoteString(partial), ";", "status=$?;", "rm", "-rf", QuoteString(staging), ";",
                        "[ $status = 0 ]", "&&", "chmod", "0400", QuoteString(partial), "&&", "mv", "-f",
                        QuoteString(partial), QuoteString(dest))


@dataclass(frozen=True)
class PartialUpload:
    """A file to send, of which the host may already hold the first `offset` bytes."""

    local: str
    remote: str
    size: int
    offset: int = 0


SEND_BLOCK = 1 << 20
PROGRESS_EVERY_S = 10.0

# The host's end of a streamed push: frames of one JSON line {"path", "offset", "size"} followed
# by `size` bytes, each written at `offset` of `path` (which must then hold exactly `offset`
# bytes). An interrupted stream leaves a prefix of the file, which the next push continues.
# Files are not fsynced here: activation verifies every byte and syncs them before the switch.
_RECEIVER = r"""
import json, os, sys
source = sys.stdin.buffer
while True:
    header = source.readline()
    if not header:
        break
    frame = json.loads(header)
    with open(frame["path"], "r+b" if frame["offset"] else "wb") as target:
        if frame["offset"] and os.fstat(target.fileno()).st_size != frame["offset"]:
            sys.exit("%s holds %d bytes, not %d" % (frame["path"], os.fstat(target.fileno()).st_size, frame["offset"]))
        target.seek(frame["offset"])
        left = frame["size"] - frame["offset"]
        while left:
            block = source.read(min(left, 1 << 20))
            if not block:
                sys.exit("the stream ended inside " + frame["path"])
            target.write(block)
            left -= len(block)
"""


TRANSPORTS = ("ssh", "sftp")


def upload_owner() -> list[str]:
    """`install -o USER` arguments for directories `resumable_upload` writes into: over SSH the login
    user writes there directly (no sudo copy); other connectors write as root."""
    if not isinstance(host.connector, SSHConnector):
        return []
    return ["-o", host.data.get("ssh_user") or host.get_fact(User, _sudo=False)]


def resumable_upload(uploads: list[PartialUpload], label: str, max_rate: float | None = None,
                     already_on_host: int = 0, transport: str = "ssh"):
    """Commands that send what the host lacks of each upload, appending to what it already holds.

    Over SSH the bytes stream through the system's OpenSSH client (with the host's SSH settings)
    into a small receiver on the host, or, with `transport="sftp"` or where that client cannot
    log in the way pyinfra does (passwords, key passphrases), through pyinfra's own connection
    (SFTP, slower: paramiko encrypts in Python). Either way they land straight in `remote`, which must be writable by
    the SSH user (no sudo copy doubling the writes); `max_rate` caps bytes/s. Other connectors
    get whole files through pyinfra's upload. A summary line ("<label>: sent N bytes ...; M bytes
    were already on the host") is logged, M being `already_on_host`, what the caller found there.
    """
    if isinstance(host.connector, SSHConnector):
        if transport not in TRANSPORTS:
            raise OperationError(f"unknown push transport {transport!r}; use one of {', '.join(TRANSPORTS)}")
        yield FunctionCommand(_send, (uploads, label, max_rate, already_on_host, transport), {})
        return
    for upload in uploads:
        yield FileUploadCommand(upload.local, upload.remote,
                                remote_temp_filename=host.get_temp_filename(upload.remote))


class _Meter:
    """Counts bytes, enforces the rate cap, logs progress now and then."""

    def __init__(self, host, label: str, total: int, max_rate: float | None):
        self.host, self.label, self.total, self.max_rate = host, label, total, max_rate
        self.sent = 0
        self.started = self.last_report = time.monotonic()

    def add(self, nbytes: int) -> None:
        self.sent += nbytes
        now = time.monotonic()
        if self.max_rate and self.sent / self.max_rate > now - self.started:
            time.sleep(self.sent / self.max_rate - (now - self.started))
        if now - self.last_report > PROGRESS_EVERY_S:
            self.last_report = now
            logger.info(f"{self.host.print_prefix}{self.label}: {self.sent / 1e9:.2f} of {self.total / 1e9:.2f} GB, "
                        f"{self.sent / 1e6 / (now - self.started):.1f} MB/s")


def _send(state, host, uploads: list[PartialUpload], label: str, max_rate: float | None,
          already_on_host: int, transport: str) -> bool:
    meter = _Meter(host, label, sum(upload.size - upload.offset for upload in uploads), max_rate)
    ssh = openssh_command(host) if transport == "ssh" else None
    if ssh is None or not _send_over_openssh(ssh, uploads, meter):
        sftp = host.connector.get_file_transfer_connection()
        uploads = [PartialUpload(u.local, u.remote, u.size, _remote_size(sftp, u)) for u in uploads]
        _send_over_sftp(sftp, uploads, meter)
    logger.info(f"{host.print_prefix}{label}: sent {meter.sent} bytes, {rate(meter.sent, time.monotonic() - meter.started)}; "
                f"{already_on_host} bytes were already on the host")
    return True


def openssh_command(host) -> list[str] | None:
    """The `ssh` command line that logs into `host` as pyinfra does, or None where it cannot
    (password or passphrase logins, custom paramiko arguments, no ssh client here)."""
    return ssh_argv(host.connector.data, host.name)


def _send_over_openssh(ssh: list[str], uploads: list[PartialUpload], meter: _Meter) -> bool:
    """Stream the uploads through one `ssh` session; False when it could not start or failed
    (the caller then continues over SFTP from whatever arrived)."""
    receiver = subprocess.Popen([*ssh, "python3 -c " + shlex.quote(_RECEIVER)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for upload in uploads:
            frame = {"path": upload.remote, "offset": upload.offset, "size": upload.size}
            receiver.stdin.write(json.dumps(frame).encode() + b"\n")
            with open(upload.local, "rb") as source:
                source.seek(upload.offset)
                while block := source.read(SEND_BLOCK):
                    receiver.stdin.write(block)
                    meter.add(len(block))
        receiver.stdin.close()
    except BrokenPipeError:
        pass
    error = receiver.stderr.read().decode(errors="replace").strip()
    if receiver.wait() != 0:
        logger.warning(f"streaming over ssh failed ({error[-300:] or receiver.returncode}); continuing over SFTP")
        return False
    return True


def _remote_size(sftp, upload: PartialUpload) -> int:
    try:
        held = sftp.stat(upload.remote).st_size
    except FileNotFoundError:
        return 0
    return held if held <= upload.size else 0


def _send_over_sftp(sftp, uploads: list[PartialUpload], meter: _Meter) -> None:
    for upload in uploads:
        if upload.offset == upload.size:
            continue
        with open(upload.local, "rb") as source, sftp.open(upload.remote, "r+b" if upload.offset else "wb") as target:
            target.set_pipelined(True)
            source.seek(upload.offset)
            target.seek(upload.offset)
            while block := source.read(SEND_BLOCK):
                target.write(block)
                meter.add(len(block))
