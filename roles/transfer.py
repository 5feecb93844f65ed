"""Operations that move files to hosts without re-hashing them on every run or printing secrets."""

from __future__ import annotations

import io
import json
import posixpath
import secrets

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.facts.files import File, Sha256File

from deepfleet.digests import sha256_file

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
