"""The resolver image: the container of a target OS whose apt resolves a bundle's packages. It is
taken only when pinned, `NAME@sha256:<digest>`, and only if this machine's Docker holds that image.

The digest is either the registry's manifest digest (what `docker image inspect` lists under
RepoDigests; `docker pull NAME@sha256:...` checks it itself) or, for an image built here, its image
ID (`docker image inspect --format '{{.Id}}' NAME`). `check_resolver_image` returns the image ID,
and the container is started by that ID, so what runs is what was checked even if a tag moves.
A tag alone is refused, with the pin to write; so is a pin no image here matches, naming the
pinned and the found value.
"""

from __future__ import annotations

import json
import re
import subprocess

_PIN = re.compile(r"^(?P<name>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")


class ResolverImageError(RuntimeError):
    """The resolver image is not pinned, or not the pinned one; the message names the pin to write."""


def split_pin(reference: str) -> tuple[str, str | None]:
    """(name, "sha256:<hex>") of a pinned reference, (name, None) of a tag alone."""
    if "@" not in reference:
        return reference, None
    match = _PIN.match(reference)
    if not match:
        raise ResolverImageError(f"the resolver image {reference} has a malformed digest; write it as "
                                 "NAME@sha256:<64 hex digits> (lower case)")
    return match["name"], match["digest"]


def repository(name: str) -> str:
    """The name without its tag, as Docker lists it in RepoDigests ("docker.io/library/debian:12" -> "debian")."""
    head, _, last = name.rpartition("/")
    repo = f"{head}/{last.split(':')[0]}" if head else last.split(":")[0]
    for prefix in ("docker.io/", "index.docker.io/", "library/"):
        repo = repo.removeprefix(prefix)
    return repo


def inspect_image(reference: str) -> dict | None:
    """This machine's Docker's `docker image inspect` of `reference`, or None when it holds no such image."""
    found = subprocess.run(["docker", "image", "inspect", "--format", "{{json .}}", reference],
                           capture_output=True, text=True)
    return json.loads(found.stdout) if found.returncode == 0 else None


def pull_image(reference: str) -> str | None:
    """`docker pull` (by digest, which Docker checks); None when it worked, else Docker's error."""
    pulled = subprocess.run(["docker", "pull", "--quiet", reference], capture_output=True, text=True)
    return None if pulled.returncode == 0 else (pulled.stderr.strip()[-300:] or f"exit status {pulled.returncode}")


def _has(info: dict | None, name: str, digest: str) -> bool:
    if info is None:
        return False
    if info.get("Id") == digest:
        return True
    return any(repository(entry.partition("@")[0]) == repository(name) and entry.partition("@")[2] == digest
               for entry in info.get("RepoDigests") or [])


def _described(info: dict) -> str:
    digests = sorted({entry.partition("@")[2] for entry in info.get("RepoDigests") or []})
    return info["Id"] + (f" (registry digest {', '.join(digests)})" if digests else " (no registry digest)")


def check_resolver_image(reference: str, what: str, inspect=inspect_image, pull=pull_image) -> str:
    """The image ID to run for the pinned `reference` (target `what`), or ResolverImageError."""
    try:
        name, digest = split_pin(reference)
    except ResolverImageError as exc:
        raise ResolverImageError(f"{what}: {exc} in bundle_resolver_images") from None
    if digest is None:
        raise ResolverImageError(_unpinned(reference, what, inspect(reference)))
    pinned = f"{repository(name)}@{digest}"
    for candidate in (digest, pinned):
        info = inspect(candidate)
        if _has(info, name, digest):
            return info["Id"]
    failed = pull(pinned)
    info = inspect(pinned) if failed is None else None
    if _has(info, name, digest):
        return info["Id"]
    here = inspect(name)
    found = f"{name} here is {_described(here)}" if here else f"no image {name} is here at all"
    fix = (f"or, once you have checked it is the image you mean, pin that one: {name}@{here['Id']}" if here
           else "or name another pinned image in bundle_resolver_images")
    raise ResolverImageError(
        f"{what}: bundle_resolver_images pins {name} to {digest}, but no image here has that ID or registry digest "
        f"and {found}; refusing to resolve packages in another image. `docker pull {pinned}` "
        f"{'gave an image without it' if failed is None else f'failed: {failed}'}. Bring the pinned image back "
        f"(`docker pull` or `docker load`) {fix}")


def _unpinned(reference: str, what: str, here: dict | None) -> str:
    start = (f"{what}: the resolver image {reference} is named by tag only, and a tag can be moved to another image "
             "without notice; bundle_resolver_images must pin it by digest")
    if here is None:
        return (f"{start}. `docker pull {reference}` (or build it), then pin it: `docker image inspect --format "
                f"'{{{{index .RepoDigests 0}}}}' {reference}` prints the pin (NAME@sha256:<registry digest>); an image "
                f"built here has none, pin it by its ID: NAME@<`docker image inspect --format '{{{{.Id}}}}' {reference}`>")
    digests = sorted(entry for entry in here.get("RepoDigests") or []
                     if repository(entry.partition("@")[0]) == repository(reference))
    pin = f"{reference}@{digests[0].partition('@')[2] if digests else here['Id']}"
    kind = "its registry digest, valid on any machine" if digests else "its image ID; it has no registry digest"
    return (f"{start}. Here {reference} is image ID {_described(here)}; after checking it is the image you mean, "
            f"pin it as {pin} ({kind})")
