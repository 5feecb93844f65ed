"""Pushing a part of a bundle to a host: resumable, checked, and skipped when it is there already.

A tree goes to `.<name>.partial/` beside its destination; only missing bytes are sent (a file cut
short by an interrupted push is continued, roles/transfer.py), the host checks every SHA-256, a
completion marker is written and the directory renamed into place. The marker ({path: sha256},
the same as transfer.push_files writes) decides later runs, without re-hashing anything.
Shell only on the host side (find, sha256sum): it runs before python3 is installed.
"""

from __future__ import annotations

import io
import json
import posixpath
import shlex

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, QuoteString, StringCommand, operation

from .transfer import MARKER, PartialUpload, resumable_upload, upload_owner

_STAGED = "--- staged"


class StagedTree(FactBase):
    """{"complete": the completion marker in `dest_dir` (or None), "staged": {path: bytes} of the
    files already in `staging_dir`}."""

    def command(self, dest_dir: str, staging_dir: str) -> str:
        marker, staging = shlex.quote(posixpath.join(dest_dir, MARKER)), shlex.quote(staging_dir)
        return (f"cat {marker} 2>/dev/null; echo '{_STAGED}'; "
                f"find {staging} -type f -printf '%s %P\\n' 2>/dev/null; true")

    def process(self, output):
        text = "\n".join(output)
        marker, _, staged = text.partition(_STAGED)
        sizes = {}
        for line in staged.strip().splitlines():
            size, _, path = line.partition(" ")
            sizes[path] = int(size)
        return {"complete": json.loads(marker) if marker.strip() else None, "staged": sizes}


def still_to_send(src_root: str, files: dict[str, dict], staged: dict[str, int], staging: str) -> list[PartialUpload]:
    """What the host lacks of `files`, given the sizes it holds in `staging`: whole files, or the rest
    of a file cut short (a file longer than it should be is damaged and sent again from the start)."""
    uploads = []
    for path, entry in sorted(files.items()):
        held = staged.get(path, 0)
        held = held if held <= entry["size"] else 0
        if held < entry["size"] or (entry["size"] == 0 and path not in staged):
            uploads.append(PartialUpload(posixpath.join(src_root, path), posixpath.join(staging, path),
                                         entry["size"], held))
    return uploads


@operation()
def push_tree(src_root: str, files: dict[str, dict], dest_dir: str, transport: str = "ssh"):
    """
    Copy a tree of files into `dest_dir` on the host, resuming an earlier push, unless it is complete.

    + src_root: the tree's root on the control machine
    + files: {relative path: {"sha256", "size"}} (a bundle manifest's entries)
    + dest_dir: where the tree lands (content-addressed by the caller); owned by root afterwards
    + transport: "ssh" or "sftp" (roles/transfer.py); "sftp" needs no python3 on the host

    .. code:: python

        push_tree(src_root="/media/bundle/apt/debian-12-amd64", files=bundle.files_under("apt/..."),
                  dest_dir="/opt/deepfleet/bundle/apt-3f2a9c0d1e2b4a5c", transport="sftp")
    """
    manifest = {path: entry["sha256"] for path, entry in files.items()}
    parent, name = posixpath.split(dest_dir.rstrip("/"))
    staging = posixpath.join(parent, f".{name}.partial")
    state = host.get_fact(StagedTree, dest_dir=dest_dir, staging_dir=staging)
    if state["complete"] == manifest:
        host.noop(f"{dest_dir} holds these {len(files)} files")
        return
    uploads = still_to_send(src_root, files, state["staged"], staging)
    held_total = sum(upload.offset for upload in uploads) + sum(
        files[path]["size"] for path, size in state["staged"].items() if path in files and size == files[path]["size"])
    directories = sorted({posixpath.dirname(posixpath.join(staging, path)) for path in files} | {staging})
    yield StringCommand("install", "-d", "-m", "0755", QuoteString(parent))
    yield StringCommand("install", "-d", "-m", "0700", *upload_owner(), *[QuoteString(d) for d in directories])
    if uploads:
        yield from resumable_upload(uploads, f"push {name}", None, held_total, transport)
    checks = [QuoteString(f"{manifest[path]}  {path}") for path in sorted(files)]
    # A file that arrived damaged fails the check; the staging directory goes, so the next run sends it all again.
    yield StringCommand("cd", QuoteString(staging), "&&", "printf", "'%s\\n'", *checks, "|", "sha256sum", "--check",
                        "--quiet", "--strict", "||", "{", "rm", "-rf", QuoteString(staging), ";", "echo",
                        QuoteString(f"{dest_dir}: a pushed file was damaged in transit; deploy again to resend"),
                        ">&2", ";", "exit", "1", ";", "}")
    marker = posixpath.join(staging, MARKER)
    yield FileUploadCommand(io.StringIO(json.dumps(manifest, indent=1, sort_keys=True) + "\n"), marker,
                            remote_temp_filename=host.get_temp_filename(marker))
    yield StringCommand("chown", "-R", "root:root", QuoteString(staging), "&&", "chmod", "-R", "u=rwX,go=rX",
                        QuoteString(staging))
    yield StringCommand("rm", "-rf", QuoteString(dest_dir), "&&", "mv", QuoteString(staging), QuoteString(dest_dir))
