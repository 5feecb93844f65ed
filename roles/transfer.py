"""Operations that move files to hosts without re-hashing them on every run or printing secrets."""

from __future__ import annotations

import io
import json
import posixpath
import secrets
import time
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, QuoteString, StringCommand, operation
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.facts.files import File, Sha256File

from deepfleet.digests import sha256_file
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


@dataclass(frozen=True)
class PartialUpload:
    """A file to send, of which the host may already hold the first `offset` bytes."""

    local: str
    remote: str
    size: int
    offset: int = 0


SEND_BLOCK = 1 << 20
PROGRESS_EVERY_S = 10.0


def resumable_upload(uploads: list[PartialUpload], label: str, max_rate: float | None = None,
                     already_on_host: int = 0):
    """Commands that send what the host lacks of each upload, appending to what it already holds.

    Over SSH the bytes go through pyinfra's own connection (SFTP, pipelined) straight into
    `remote`, which must be writable by the SSH user (no sudo copy doubling the writes);
    `max_rate` caps bytes/s. Other connectors get whole files through pyinfra's upload.
    A summary line ("<label>: sent N bytes ...; M bytes were already on the host") is logged,
    M being `already_on_host`, what the caller found there, complete files included.
    """
    if isinstance(host.connector, SSHConnector):
        yield FunctionCommand(_send_over_sftp, (uploads, label, max_rate, already_on_host), {})
        return
    for upload in uploads:
        yield FileUploadCommand(upload.local, upload.remote,
                                remote_temp_filename=host.get_temp_filename(upload.remote))


def _send_over_sftp(state, host, uploads: list[PartialUpload], label: str, max_rate: float | None,
                    already_on_host: int) -> bool:
    sftp = host.connector.get_file_transfer_connection()
    total = sum(upload.size - upload.offset for upload in uploads)
    started = last_report = time.monotonic()
    sent = 0
    for upload in uploads:
        with open(upload.local, "rb") as source, sftp.open(upload.remote, "r+b" if upload.offset else "wb") as target:
            target.set_pipelined(True)
            source.seek(upload.offset)
            target.seek(upload.offset)
            while block := source.read(SEND_BLOCK):
                target.write(block)
                sent += len(block)
                now = time.monotonic()
                if max_rate and sent / max_rate > now - started:
                    time.sleep(sent / max_rate - (now - started))
                if now - last_report > PROGRESS_EVERY_S:
                    last_report = now
                    logger.info(f"{host.print_prefix}{label}: {sent / 1e9:.2f} of {total / 1e9:.2f} GB, "
                                f"{sent / 1e6 / (now - started):.1f} MB/s")
    logger.info(f"{host.print_prefix}{label}: sent {sent} bytes, {rate(sent, time.monotonic() - started)}; "
                f"{already_on_host} bytes were already on the host")
    return True
