"""The trust role: the site's own CAs (of its mirrors, proxy, registry) trusted by the host and by Docker.

With `trust_ca_certificates` (PEM files on the control machine), before any repository is used:
    Debian/Ubuntu  /usr/local/share/ca-certificates/deepfleet-<name>.crt, then `update-ca-certificates`
                   (update-ca-certificates(8): local CAs go there, one PEM certificate per .crt file)
    RHEL family    /etc/pki/ca-trust/source/anchors/deepfleet-<name>.crt, then `update-ca-trust extract`
                   (update-ca-trust(8))
    Docker         /etc/docker/certs.d/<registry>/ca.crt for every registry of `trust_docker_registries` and
                   every host of `docker_registry_mirrors` (Docker's "Verify repository client with
                   certificates": dockerd reads it per pull, no restart)
apt, dnf, python3's ssl and dockerd all read the system store, so internal mirrors served with the
site's certificates work without disabling verification anywhere. Files deepfleet placed earlier
whose CA left the setting are removed (and the store rebuilt).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindFiles
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

from .common import RoleError, control_path
from .defaults import DEFAULTS
from .hostos import HostOS, host_os

DOCKER_CERTS = "/etc/docker/certs.d"
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class TrustStore:
    """Where an OS family keeps local CAs and the command that rebuilds its bundle."""

    anchors: str
    update: str


STORES = {"debian": TrustStore("/usr/local/share/ca-certificates", "update-ca-certificates"),
          "rhel": TrustStore("/etc/pki/ca-trust/source/anchors", "update-ca-trust extract")}


def trust_store(os: HostOS) -> TrustStore:
    return STORES[os.family]


def ca_files(settings: Mapping) -> dict[str, Path]:
    """{remote file name: local PEM} of `trust_ca_certificates`; RoleError naming a file that is missing
    or holds no PEM certificate."""
    found = {}
    for value in settings["trust_ca_certificates"]:
        path = control_path(value, "trust_ca_certificates")
        if not path.is_file():
            raise RoleError(f"trust_ca_certificates names {path}, which does not exist")
        if PEM_BEGIN not in path.read_text(errors="replace"):
            raise RoleError(f"trust_ca_certificates: {path} holds no PEM certificate ({PEM_BEGIN}); convert "
                            "it with `openssl x509 -inform der -in FILE -out FILE.pem`")
        found[f"deepfleet-{path.stem}.crt"] = path
    return found


def docker_registries(settings: Mapping) -> list[str]:
    """Registries that get the site's CAs: `trust_docker_registries` and the hosts of the mirrors."""
    registries = list(settings["trust_docker_registries"])
    for mirror in settings["docker_registry_mirrors"] or []:
        netloc = urlsplit(mirror).netloc
        if netloc and netloc not in registries:
            registries.append(netloc)
    return registries


def docker_ca_bundle(cas: Mapping[str, Path]) -> str:
    """One ca.crt with every site CA, in the order given."""
    return "".join(path.read_text().rstrip("\n") + "\n" for path in cas.values())


@deploy("Site CAs", data_defaults=DEFAULTS)
def site_trust():
    """Install the site's CAs into the host's trust store and Docker's; rebuild the store on a change."""
    settings = {key: host.data.get(key) for key in DEFAULTS}
    store = trust_store(host_os())
    cas = ca_files(settings)
    placed = [files.put(name=f"Site CA {name}", src=str(local), dest=f"{store.anchors}/{name}", user="root",
                        group="root", mode="0644") for name, local in cas.items()]
    for stale in host.get_fact(FindFiles, path=store.anchors, fname="deepfleet-*.crt", quote_path=True) or []:
        if stale.rsplit("/", 1)[1] not in cas:
            placed.append(files.file(name=f"Site CA {stale.rsplit('/', 1)[1]}: no longer trusted", path=stale,
                                     present=False))
    if placed:
        server.shell(name="Rebuild the host's CA bundle", commands=[store.update], _if=any_changed(*placed))
    if cas:
        bundle = docker_ca_bundle(cas)
        for registry in docker_registries(settings):
            files.directory(name=f"Docker: certificates of {registry}", path=f"{DOCKER_CERTS}/{registry}",
                            user="root", group="root", mode="0755")
            files.put(name=f"Docker: the site's CAs for {registry}", src=io.StringIO(bundle),
                      dest=f"{DOCKER_CERTS}/{registry}/ca.crt", user="root", group="root", mode="0644")

