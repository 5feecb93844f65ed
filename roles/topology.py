"""Who does what in a fleet, from the inventory's groups: `gpu_nodes` serve the model (runtime
replicas), `gateways` face clients and route to every replica; one host can be both. An inventory
without these groups (one host, the demo, several independent hosts) gives every host both jobs,
alone: its gateway routes to its own runtime on loopback, and hosts never reach each other.

A multi-node model (roles/ray.py) is served by the Ray head of its group: workers hold the model
and join the head's Ray cluster, but run no runtime of their own, so only heads are replicas.
Replicas on other hosts than a gateway are reached over mutual TLS. Hosts are compared by name
(the deploy's `host` is a context proxy, not the inventory's Host object).
"""

from __future__ import annotations

from pyinfra.api.host import Host

from .defaults import DEFAULTS

GPU_NODES = "gpu_nodes"
GATEWAYS = "gateways"


def setting(host: Host, key: str):
    """`key` from a host's data, else its default (deploy data defaults apply only to the host being
    deployed; this reads other hosts too)."""
    value = host.data.get(key)
    return DEFAULTS[key] if value is None else value


def _members(inventory, group: str) -> list[Host] | None:
    """The hosts of `group`, or None when the inventory has no such group (or an empty one)."""
    hosts = inventory.get_group(group, default=None)
    return list(hosts) if hosts else None


def is_fleet(inventory) -> bool:
    """The inventory names its topology (a `gpu_nodes` or `gateways` group); else every host stands alone."""
    return _members(inventory, GPU_NODES) is not None or _members(inventory, GATEWAYS) is not None


def gpu_nodes(inventory) -> list[Host]:
    """Hosts that hold the model: the `gpu_nodes` group, else every host."""
    members = _members(inventory, GPU_NODES)
    return members if members is not None else list(inventory)


def gateway_hosts(inventory) -> list[Host]:
    """Hosts that run a gateway: the `gateways` group, else every host."""
    members = _members(inventory, GATEWAYS)
    return members if members is not None else list(inventory)


def holds_model(host: Host) -> bool:
    return host.name in {node.name for node in gpu_nodes(host.inventory)}


def runs_gateway(host: Host) -> bool:
    return host.name in {gateway.name for gateway in gateway_hosts(host.inventory)}


def is_ray_worker(host: Host) -> bool:
    """A node of a multi-node model that is not its Ray head."""
    head = setting(host, "ray_head")
    return bool(head) and head != host.name


def runs_runtime(host: Host) -> bool:
    """Serves requests: holds the model and is not a Ray worker."""
    return holds_model(host) and not is_ray_worker(host)


def replicas(inventory) -> list[Host]:
    """Every runtime replica of the fleet, in inventory order."""
    return [node for node in gpu_nodes(inventory) if runs_runtime(node)]


def runtime_address(host: Host) -> str:
    """Where other hosts reach this host's runtime (and Ray): runtime_address, else its SSH address."""
    return setting(host, "runtime_address") or host.data.get("ssh_hostname") or host.name


def gateway_replicas(gateway: Host) -> list[Host]:
    """The replicas a gateway routes to: every replica of a fleet, or a lone host's own runtime."""
    if is_fleet(gateway.inventory):
        return replicas(gateway.inventory)
    return [gateway] if runs_runtime(gateway) else []


def runtime_needs_tls(host: Host) -> bool:
    """A replica that a gateway on another host routes to serves mutual TLS on runtime_address."""
    return (is_fleet(host.inventory) and runs_runtime(host)
            and any(gateway.name != host.name for gateway in gateway_hosts(host.inventory)))


def replica_url(node: Host) -> str:
    """The URL gateways use for `node`'s runtime."""
    port = setting(node, "runtime_port")
    if runtime_needs_tls(node):
        return f"https://{runtime_address(node)}:{port}"
    return f"http://127.0.0.1:{port}"


def fleet_upstreams(gateway: Host) -> list[dict]:
    """gateway_upstreams for a gateway: every replica of the fleet (explicit gateway_upstreams win)."""
    explicit = setting(gateway, "gateway_upstreams")
    if explicit:
        return list(explicit)
    return [{"name": node.name, "url": replica_url(node)} for node in gateway_replicas(gateway)]


# Settings the fleet workflows (deepfleet rollout, deepfleet status) read about each host.
WORKFLOW_SETTINGS = ("deepfleet_home", "deepfleet_config_dir", "gateway_admin_socket", "model_name",
                     "runtime_port", "runtime_ready_timeout_s", "rollout_drain_timeout_s", "rollout_healthy_timeout_s",
                     "rollout_smoke_prompt", "rollout_smoke_max_tokens", "rollout_bake_max_error_percent",
                     "rollout_bake_latency_factor", "rollout_bake_min_requests", "gateway_state_dir",
                     "gateway_audit_dir", "gateway_pki_dir", "gateway_audit_signing", "gateway_group",
                     "gateway_api_keyring")


def describe(host: Host) -> dict:
    """What `deepfleet rollout` and `deepfleet status` need to know about a host, resolved here (by
    the roles' own topology and defaults): its jobs, its Ray group, the settings they read."""
    members = [node.name for node in gpu_nodes(host.inventory)
               if setting(node, "ray_head") and setting(node, "ray_head") == setting(host, "ray_head")]
    return {
        "name": host.name,
        "fleet": is_fleet(host.inventory),
        "order": [other.name for other in host.inventory].index(host.name),
        "gateway": runs_gateway(host),
        "replica": runs_runtime(host),
        "holds_model": holds_model(host),
        "ray_workers": [name for name in members if name != host.name] if runs_runtime(host) else [],
        "sudo": bool(host.data.get("_sudo")),
        "settings": {**{key: setting(host, key) for key in WORKFLOW_SETTINGS},
                     "runtime_url": replica_url(host) if runs_runtime(host) else None},
    }
