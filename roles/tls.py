"""A host's TLS material from the internal CA (.deepfleet/pki): the CA certificate, the host's
server certificate (gateway port, and the runtime port when gateways on other hosts reach it) and
a client certificate (what a gateway presents to runtimes on other hosts, and what a runtime host
presents to its own mTLS port for readiness checks). Keys go through secret_file: hash-compared,
never diffed.

The gateway and runtime roles both ask for them; each file is pushed once per host and run, and
both roles get the same operations back (to restart their service when a certificate changed).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.context import ctx_state
from pyinfra.operations import files

from deepfleet.pki import ca_paths, ensure_client_cert, ensure_server_cert

from .common import control_path, tls_dir
from .topology import runs_gateway
from .transfer import secret_file

_LOOPBACK_NAMES = ["localhost", "127.0.0.1"]  # so the deploy's own readiness checks verify the cert
# state -> host name -> pushed file -> its operation (one deploy run per state)
_pushed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def server_names(settings: Mapping, host_name: str, faces_clients: bool) -> list[str]:
    """The names the host's certificate covers: its inventory name, SSH address, runtime address,
    and, only on a host that runs a gateway (`faces_clients`), the names clients use
    (gateway_server_names): a GPU node's certificate must not be good for the hospital's endpoint."""
    names = [host_name, *(settings["gateway_server_names"] if faces_clients else []), *_LOOPBACK_NAMES]
    for key in ("ssh_hostname", "runtime_address"):
        if settings.get(key):
            names.append(settings[key])
    return sorted(set(names))


def tls_paths() -> dict[str, str]:
    """Where the host keeps its TLS files."""
    directory = tls_dir()
    return {name: f"{directory}/{name}" for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def host_certificates(settings: Mapping, client: bool = False) -> list[OperationMeta]:
    """Push the CA certificate, the server pair and (with `client`) the client pair; returns their
    operations (a change restarts the service that uses them)."""
    pki_dir = control_path(settings["gateway_pki_dir"], "gateway_pki_dir")
    pushed = _pushed.setdefault(ctx_state.get(), {}).setdefault(host.name, {})
    group, paths = settings["deepfleet_group"], tls_paths()
    wanted = ["server"] + (["client"] if client else [])
    if "ca" not in pushed:
        pushed["ca"] = files.put(name="Internal CA certificate", src=str(ca_paths(pki_dir).cert), dest=paths["ca.crt"],
                                 user="root", group=group, mode="0644")
    for kind in wanted:
        if kind in pushed:
            continue
        if kind == "server":
            pair, _ = ensure_server_cert(pki_dir, host.name, server_names(settings, host.name, runs_gateway(host)))
        else:
            pair, _ = ensure_client_cert(pki_dir, host.name)
        label = "TLS server" if kind == "server" else "TLS client (mutual TLS)"
        pushed[kind] = files.put(name=f"{label} certificate", src=str(pair.cert), dest=paths[f"{kind}.crt"],
                                 user="root", group=group, mode="0644")
        pushed[f"{kind}-key"] = secret_file(name=f"{label} key", src=str(pair.key), dest=paths[f"{kind}.key"],
                                            user="root", group=group, mode="0640")
    return [pushed["ca"], *(pushed[name] for kind in wanted for name in (kind, f"{kind}-key"))]
