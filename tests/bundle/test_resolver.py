"""The resolver image is used only when pinned, and only as pinned: the parsing and refusal paths, then
against this machine's real Docker engine (tiny images made with `docker import`, no registry)."""

from __future__ import annotations

import io
import secrets
import shutil
import subprocess
import tarfile

import pytest

from deepfleet.bundle.resolver import ResolverImageError, check_resolver_image, split_pin

ID = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
REGISTRY = "sha256:" + "3" * 64


def _fake(images: dict[str, dict], pulls: dict[str, dict] | None = None):
    """inspect and pull as Docker answers them, from {reference: inspect JSON}; a pull adds its image."""
    def inspect(reference):
        return images.get(reference)

    def pull(reference):
        if reference not in (pulls or {}):
            return "pull access denied"
        images[reference] = pulls[reference]
        return None
    return {"inspect": inspect, "pull": pull}


def test_a_pin_is_a_name_and_a_sha256_digest():
    assert split_pin(f"debian:12@{ID}") == ("debian:12", ID)
    assert split_pin(f"registry.example:5000/os/debian@{ID}") == ("registry.example:5000/os/debian", ID)
    assert split_pin("debian:12") == ("debian:12", None)
    for bad in ("debian@sha256:abc", f"debian@md5:{'1' * 64}", f"@{ID}", f"debian@{ID.upper()}"):
        with pytest.raises(ResolverImageError, match="NAME@sha256:<64 hex digits>"):
            split_pin(bad)


def test_an_image_id_or_a_registry_digest_is_accepted_and_the_id_is_what_runs():
    local = {"Id": ID, "RepoTags": ["deepfleet-testhost:abc"], "RepoDigests": []}
    assert check_resolver_image(f"deepfleet-testhost:abc@{ID}", "debian-12-amd64", **_fake({ID: local})) == ID
    pulled = {"Id": OTHER, "RepoTags": ["debian:12"], "RepoDigests": [f"debian@{REGISTRY}"]}
    images = {f"debian@{REGISTRY}": pulled}
    assert check_resolver_image(f"docker.io/library/debian:12@{REGISTRY}", "debian-12-amd64", **_fake(images)) == OTHER


def test_an_image_missing_here_is_pulled_by_digest_which_docker_checks():
    pulled = {"Id": OTHER, "RepoTags": [], "RepoDigests": [f"debian@{REGISTRY}"]}
    fake = _fake({}, pulls={f"debian@{REGISTRY}": pulled})
    assert check_resolver_image(f"debian:12@{REGISTRY}", "debian-12-amd64", **fake) == OTHER


def test_an_image_whose_registry_digest_belongs_to_another_repository_is_not_taken():
    info = {"Id": OTHER, "RepoTags": [], "RepoDigests": [f"evil/debian@{REGISTRY}"]}
    with pytest.raises(ResolverImageError, match=f"pins debian to {REGISTRY}"):
        check_resolver_image(f"debian@{REGISTRY}", "debian-12-amd64", **_fake({f"debian@{REGISTRY}": info}))


def test_a_mismatch_names_the_expected_and_the_found_value():
    moved = {"Id": OTHER, "RepoTags": ["debian:12"], "RepoDigests": [f"debian@{REGISTRY}"]}
    with pytest.raises(ResolverImageError) as error:
        check_resolver_image(f"debian:12@{ID}", "debian-12-amd64", **_fake({"debian:12": moved}))
    message = str(error.value)
    assert f"pins debian:12 to {ID}" in message and f"debian:12 here is {OTHER}" in message
    assert f"registry digest {REGISTRY}" in message and "pull access denied" in message
    with pytest.raises(ResolverImageError, match="no image debian:12 is here at all"):
        check_resolver_image(f"debian:12@{ID}", "debian-12-amd64", **_fake({}))


def test_a_tag_alone_is_refused_with_the_pin_to_write():
    here = {"Id": OTHER, "RepoTags": ["debian:12"], "RepoDigests": [f"debian@{REGISTRY}"]}
    with pytest.raises(ResolverImageError) as error:
        check_resolver_image("debian:12", "debian-12-amd64", **_fake({"debian:12": here}))
    assert "named by tag only" in str(error.value) and f"debian:12@{REGISTRY}" in str(error.value)
    assert OTHER in str(error.value)  # the local image ID too
    built = {"Id": OTHER, "RepoTags": ["deepfleet-testhost:abc"], "RepoDigests": []}
    with pytest.raises(ResolverImageError, match=f"as deepfleet-testhost:abc@{OTHER}"):
        check_resolver_image("deepfleet-testhost:abc", "debian-12-amd64", **_fake({"deepfleet-testhost:abc": built}))
    with pytest.raises(ResolverImageError, match=r"`docker pull debian:12` \(or build it\), then pin it: `docker image inspect"):
        check_resolver_image("debian:12", "debian-12-amd64", **_fake({}))


def _import(tag: str, text: bytes) -> str:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("os-release")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    subprocess.run(["docker", "import", "-", tag], input=layer.getvalue(), check=True, capture_output=True)
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(not shutil.which("docker"), reason="needs this machine's Docker engine")
def test_against_real_docker_the_pinned_id_runs_and_a_moved_tag_is_refused():
    tag = f"deepfleet-resolver-test:{secrets.token_hex(4)}"
    pinned = _import(tag, b"ID=first\n" + secrets.token_bytes(8))
    try:
        assert check_resolver_image(f"{tag}@{pinned}", "debian-12-amd64") == pinned
        with pytest.raises(ResolverImageError, match=f"as {tag}@{pinned}"):
            check_resolver_image(tag, "debian-12-amd64")
        moved = _import(tag, b"ID=second\n" + secrets.token_bytes(8))  # the tag now names another image
        assert moved != pinned
        assert check_resolver_image(f"{tag}@{pinned}", "debian-12-amd64") == pinned  # the pinned one, not the tag's
        subprocess.run(["docker", "rmi", pinned], check=True, capture_output=True)
        with pytest.raises(ResolverImageError) as error:
            check_resolver_image(f"{tag}@{pinned}", "debian-12-amd64")
        assert f"pins {tag} to {pinned}" in str(error.value) and f"{tag} here is {moved}" in str(error.value)
    finally:
        subprocess.run(["docker", "rmi", "--force", tag], capture_output=True)
        subprocess.run(["docker", "rmi", "--force", pinned], capture_output=True)
