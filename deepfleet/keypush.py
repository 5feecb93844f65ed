"""The host key file pushed to every gateway of a fleet at once (`deepfleet keys revoke NAME
INVENTORY`, `keys rotate`, `keys push`), without a converge: over ssh as the fleet workflows log in
(deepfleet/remote.py), written beside the old one and renamed over it (never half a file), owned
and moded as the gateway role leaves it (so the next deploy finds nothing to change). Then each
gateway is asked to read it now (`gateway-admin keys --reload` on its admin socket) and must
answer with the SHA-256 of exactly what was pushed: only then is that gateway confirmed.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .fleet import Fleet, FleetHost
from .remote import RemoteError, run_remote

# argv: destination, group. The new content comes on stdin.
INSTALL = ('umask 077; dest="$1"; tmp=$(mktemp "$dest.XXXXXX") && cat > "$tmp" && sync "$tmp" && '
           'chown root:"$2" "$tmp" && chmod 0640 "$tmp" && mv -f "$tmp" "$dest" || { rm -f "$tmp"; exit 1; }')


@dataclass(frozen=True)
class PushResult:
    """What one gateway did with the pushed key file."""

    gateway: str
    confirmed: bool
    detail: str
    seconds: float


def key_file_path(gateway: FleetHost) -> str:
    """Where the gateway role puts the host key file (roles/gateway.py)."""
    return f"{gateway.settings['deepfleet_config_dir']}/api_keys.json"


def push_one(gateway: FleetHost, content: str, timeout: float = 60.0) -> PushResult:
    """Install `content` as `gateway`'s key file and confirm the gateway reads it."""
    started = time.monotonic()
    wanted = hashlib.sha256(content.encode()).hexdigest()
    try:
        run_remote(gateway.ssh, ["sh", "-c", INSTALL, "sh", key_file_path(gateway), gateway.settings["gateway_group"]],
                   sudo=gateway.sudo, timeout=timeout, stdin=content)
        code, state = gateway.admin("keys", "--reload", timeout=timeout)
    except RemoteError as exc:
        return PushResult(gateway.name, False, str(exc), time.monotonic() - started)
    seconds = time.monotonic() - started
    if code != 0 or state.get("sha256") != wanted:
        why = state.get("error") or f"it reads a key file with SHA-256 {state.get('sha256')}, not {wanted}"
        return PushResult(gateway.name, False, f"the gateway did not take the new key file: {why}", seconds)
    return PushResult(gateway.name, True, f"reads the new key file (SHA-256 {wanted[:16]}…, {state['entries']} "
                                          "entries)", seconds)


def push_key_file(fleet: Fleet, content: str) -> list[PushResult]:
    """`content` to every gateway of `fleet` at once; one result per gateway, in fleet order."""
    gateways = fleet.gateways
    if not gateways:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(gateways))) as pool:
        return list(pool.map(lambda gateway: push_one(gateway, content), gateways))
