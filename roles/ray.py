"""The ray role: one model served by several hosts. The gpu nodes that share a `ray_head` form a Ray
cluster (the head and its workers, each a systemd unit running the venv's pinned `ray`); the head's
runtime runs vLLM with the Ray backend, tensor parallel over each host's GPUs and pipeline parallel
over the hosts, as the capacity planner decides (deepfleet_runtime.planner.plan_nodes) from the
model's config.json and the hosts' GPUs. Workers hold the model (vLLM loads each stage's weights
on its host) but run no runtime. Ray listens on each node's ray_node_address (default: its
runtime_address) with fixed ports; the firewall role admits every port from the cluster's own nodes
and none from elsewhere (Ray has no authentication: whoever reaches its ports runs code on the
cluster).

The runtime role calls ray() once the venv is installed and before the runtime starts (vLLM needs
the cluster). `ray` is pinned by the runtime package's `ray` extra (runtime/pyproject.toml).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from deepfleet_runtime.planner import PlanError, load_config, parse_gpus, plan_nodes

from .common import RoleError, control_path, template
from .defaults import DEFAULTS
from .facts import InterfaceAddresses
from .gpu_facts import gpu_spec, nvidia_devices
from .topology import gpu_nodes, runtime_address, setting

RAY_EXTRA = "ray"


def cluster_members(node) -> list:
    """The gpu nodes of `node`'s Ray cluster (those naming the same head), head first."""
    head = setting(node, "ray_head")
    members = [other for other in gpu_nodes(node.inventory) if setting(other, "ray_head") == head]
    if head not in {member.name for member in members}:
        raise RoleError(f"ray_head of {node.name} is {head!r}, which is not a gpu node naming the same ray_head; "
                        "set ray_head on every node of the group, the head included")
    return sorted(members, key=lambda member: member.name != head)


def ray_start_argv(ray: str, settings: Mapping, node_ip: str, head_ip: str, is_head: bool, gpus: int,
                   temp_dir: str) -> list[str]:
    """`ray start` for a head or a worker: fixed ports (Ray's listeners stay where the docs say), this
    node's address, no dashboard, no usage reporting, in the foreground (systemd supervises it)."""
    argv = [ray, "start", "--block", f"--node-ip-address={node_ip}", f"--num-gpus={gpus}",
            f"--node-manager-port={settings['ray_node_manager_port']}",
            f"--object-manager-port={settings['ray_object_manager_port']}",
            f"--metrics-export-port={settings['ray_metrics_export_port']}",
            f"--dashboard-agent-listen-port={settings['ray_dashboard_agent_port']}",
            f"--dashboard-agent-grpc-port={settings['ray_dashboard_agent_port'] + 1}",
            f"--runtime-env-agent-port={settings['ray_runtime_env_agent_port']}",
            f"--min-worker-port={settings['ray_min_worker_port']}",
            f"--max-worker-port={settings['ray_max_worker_port']}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    if is_head:
        return argv + ["--head", f"--port={settings['ray_port']}",
                       f"--ray-client-server-port={settings['ray_client_server_port']}", "--include-dashboard=false"]
    return argv + [f"--address={head_ip}:{settings['ray_port']}"]


def node_address(node) -> str:
    """Where the other nodes of its Ray cluster reach `node`: ray_node_address, else runtime_address."""
    return setting(node, "ray_node_address") or runtime_address(node)


def ray_peers(node) -> list[str]:
    """The addresses of the other nodes of `node`'s Ray cluster: the firewall admits every port from
    them (vLLM's torch.distributed store, NCCL and Ray's workers listen on ephemeral ports), and none
    from elsewhere."""
    return [node_address(member) for member in cluster_members(node) if member.name != node.name]


def check_cluster_addresses(members: list, network_interface: str | None) -> None:
    """RoleError unless every node of the cluster has an IP address for Ray and, with
    `network_interface`, this host's is an address of that interface (NCCL and Gloo use that NIC:
    the peers' firewalls must admit the address its traffic comes from)."""
    for member in members:
        try:
            ipaddress.ip_address(node_address(member))
        except ValueError:
            raise RoleError(f"{member.name}: Ray needs the node's IP address, and its address is "
                            f"{node_address(member)!r}; set ray_node_address (or runtime_address) of {member.name} "
                            "to its IP address on the cluster network") from None
    if not network_interface:
        return
    addresses = host.get_fact(InterfaceAddresses, interface=network_interface)
    if addresses is None:
        raise RoleError(f"{host.name}: ray_network_interface is {network_interface!r}, which is no network "
                        "interface of this host; name the NIC of the cluster network (`ip -br addr`)")
    if node_address(host) not in addresses:
        found = ", ".join(addresses) or "no address"
        raise RoleError(f"{host.name}: ray_network_interface {network_interface} has {found}, and this node's Ray "
                        f"address is {node_address(host)}: set ray_node_address to its address on {network_interface}, "
                        "so that Ray, NCCL and Gloo all use the cluster network and the peers' firewalls admit it")


def head_runtime_settings(settings: Mapping) -> dict:
    """runtime_* settings of a Ray head: vLLM on the cluster, with the parallelism the planner picks
    for the model over the cluster's hosts (explicit runtime_vllm_*_parallel_size settings win)."""
    members = cluster_members(host)
    overrides = {"runtime_vllm_ray_address": f"{node_address(host)}:{settings['ray_port']}",
                 "runtime_vllm_host_ip": node_address(host),
                 "runtime_vllm_network_interface": settings["ray_network_interface"] or ""}
    if settings["runtime_vllm_pipeline_parallel_size"] > 1:
        return overrides
    spec = gpu_spec(None, nvidia_devices())
    if not spec or "+" in spec:
        raise RoleError(f"{host.name}: the planner needs one kind of GPU per host to spread the model, found "
                        f"{spec or 'none'}; set runtime_vllm_tensor_parallel_size and runtime_vllm_pipeline_parallel_size")
    try:
        config = load_config(control_path(settings["model_source"], "model_source"))
        dtype = settings["runtime_dtype"] if settings["runtime_dtype"] != "auto" else "bfloat16"
        result = plan_nodes(config, parse_gpus(spec), len(members), settings["runtime_quantization"], dtype,
                            settings["runtime_gpu_memory_fraction"])
    except PlanError as exc:
        raise RoleError(f"{host.name}: the planner cannot read the model ({exc}); set "
                        "runtime_vllm_tensor_parallel_size and runtime_vllm_pipeline_parallel_size") from None
    if not result.fits:
        raise RoleError(f"{host.name}: {settings['model_name']} {result.detail}")
    if result.pipeline_parallel < len(members):
        raise RoleError(f"{host.name}: {settings['model_name']} {result.detail}, not all {len(members)} hosts of "
                        f"the Ray group of {host.name}; take the others out of it (without ray_head each host serves "
                        "the model alone: more replicas)")
    return overrides | {"runtime_vllm_tensor_parallel_size": result.tensor_parallel,
                        "runtime_vllm_pipeline_parallel_size": result.pipeline_parallel}


@deploy("deepfleet ray", data_defaults=DEFAULTS)
def ray(restart_inputs: list | None = None):
    """Run this node's Ray head or worker unit (hosts with `ray_head`); restart it when its unit or
    `restart_inputs` (the venv install) changed."""
    data = host.data
    if not data.ray_head:
        raise RoleError(f"{host.name}: the ray role needs ray_head, the inventory name of the Ray group's head")
    members = cluster_members(host)
    is_head = host.name == data.ray_head
    venv = f"{data.deepfleet_home}/venv"
    settings = {key: data.get(key) for key in DEFAULTS}
    check_cluster_addresses(members, data.ray_network_interface)
    node_ip, head_ip = node_address(host), node_address(members[0])
    argv = ray_start_argv(f"{venv}/bin/ray", settings, node_ip, head_ip, is_head, len(nvidia_devices()),
                          f"{data.deepfleet_state_dir}/ray")
    role = "head" if is_head else f"worker of {data.ray_head}"
    unit = files.template(name=f"Ray {role} systemd unit", src=template("systemd/deepfleet-ray.service.j2"),
                          dest="/etc/systemd/system/deepfleet-ray.service", user="root", group="root", mode="0644",
                          role=role, model_name=data.model_name, exec_start=shlex.join(argv),
                          ray=f"{venv}/bin/ray", node_ip=node_ip, network_interface=data.ray_network_interface,
                          service_user=data.deepfleet_user, service_group=data.deepfleet_group,
                          state_dir=data.deepfleet_state_dir)
    systemd.daemon_reload(name="Reload systemd units for deepfleet-ray", _if=unit.did_change)
    systemd.service(name="Enable and start deepfleet-ray", service="deepfleet-ray.service", running=True,
                    enabled=True)
    systemd.service(name="Restart deepfleet-ray for a new unit or ray version", service="deepfleet-ray.service",
                    restarted=True, _if=any_changed(unit, *(restart_inputs or [])))
