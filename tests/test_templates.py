"""Templates rendered exactly as the roles render them, then read back by the runtime's own loaders."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest
import yaml
from pyinfra.api.util import get_template

from deepfleet_runtime.configfile import from_mapping
from deepfleet_runtime.config import RuntimeConfig
from deepfleet_runtime.gateway.config import GatewayConfig
from roles.common import TEMPLATES, RoleError
from roles.defaults import DEFAULTS
from roles.gateway import gateway_yaml_context
from roles.tls import server_names
from roles.runtime import runtime_yaml_context, tmpfs_noswap, unit_context


def _render(name, **context):
    return get_template(str(TEMPLATES / name)).render(**context)


def _unit(text):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return parser


def test_runtime_yaml_from_defaults_is_a_valid_runtime_config():
    text = _render("runtime.yaml.j2", **runtime_yaml_context(DEFAULTS, "/opt/deepfleet/models/m@abc"))
    config = from_mapping(RuntimeConfig, yaml.safe_load(text), "runtime.yaml")
    assert config.server.host == "127.0.0.1"
    assert config.server.port == DEFAULTS["runtime_port"]
    assert str(config.model.path) == "/opt/deepfleet/models/m@abc"
    assert config.model.name == DEFAULTS["model_name"]


def test_runtime_yaml_follows_inventory_overrides():
    settings = {**DEFAULTS, "runtime_port": 9123, "runtime_max_tokens": 77, "model_name": 'odd "name": x',
                "runtime_dtype": "bfloat16"}
    config = from_mapping(RuntimeConfig, yaml.safe_load(_render("runtime.yaml.j2", **runtime_yaml_context(settings, "/m"))),
                          "runtime.yaml")
    assert (config.server.port, config.limits.max_tokens, config.model.name, config.dtype) == (
        9123, 77, 'odd "name": x', "bfloat16")


def test_runtime_yaml_carries_engine_quantization_and_scheduler_settings():
    settings = {**DEFAULTS, "runtime_engine": "vllm", "runtime_device": "cuda", "runtime_quantization": "int4",
                "runtime_quantization_method": "awq", "runtime_max_batch_size": 64, "runtime_kv_cache_tokens": 9000,
                "runtime_gpu_memory_fraction": 0.85, "runtime_vllm_tensor_parallel_size": 2,
                "runtime_vllm_ray_address": "head:6379", "runtime_reasoning_parser": "deepseek_r1",
                "runtime_llamacpp_n_ctx": 2048}
    config = from_mapping(RuntimeConfig, yaml.safe_load(_render("runtime.yaml.j2", **runtime_yaml_context(settings, "/m"))),
                          "runtime.yaml")
    assert (config.engine, config.device, config.reasoning_parser) == ("vllm", "cuda", "deepseek_r1")
    assert (config.quantization.mode, config.quantization.method) == ("int4", "awq")
    assert (config.scheduler.max_batch_size, config.scheduler.kv_cache_tokens) == (64, 9000)
    assert config.memory.gpu_memory_fraction == 0.85
    assert (config.vllm.tensor_parallel_size, config.vllm.ray_address) == (2, "head:6379")
    assert config.llamacpp.n_ctx == 2048


def _gateway_config(settings):
    text = _render("gateway.yaml.j2", **gateway_yaml_context(settings, "gpu1"))
    return from_mapping(GatewayConfig, yaml.safe_load(text), "gateway.yaml")


def test_gateway_yaml_is_a_valid_gateway_config_pointing_at_the_runtime():
    settings = {**DEFAULTS, "runtime_port": 9123, "gateway_port": 443, "deepfleet_config_dir": "/etc/df",
                "runtime_max_tokens": 77, "gateway_default_rpm": 5}
    config = _gateway_config(settings)
    assert [(u.name, u.url, u.release) for u in config.upstreams] == [("gpu1", "http://127.0.0.1:9123", "")]
    assert config.upstream_tls is None
    assert config.listen.port == 443
    assert str(config.tls.key) == "/etc/df/tls/server.key"
    assert str(config.api_keys_file) == "/etc/df/api_keys.json"
    assert (config.limits.max_tokens, config.limits.default_rpm) == (77, 5)
    assert str(config.audit.dir) == "/var/lib/deepfleet-gateway/audit"
    assert str(config.audit.checkpoint_key) == "/etc/df/tls/audit-signing.key"  # signed by default
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 9464)
    assert config.connections.max_per_client == DEFAULTS["gateway_max_connections_per_client"]
    assert config.connections.max_header_bytes == DEFAULTS["gateway_max_header_bytes"]


def test_gateway_yaml_with_remote_replicas_uses_mutual_tls_and_signing():
    settings = {**DEFAULTS, "gateway_audit_signing": True, "gateway_audit_dir": "/srv/audit",
                "gateway_upstreams": [{"name": "gpu2", "url": "https://10.0.0.12:8000"},
                                      {"url": "https://10.0.0.13:8000"}]}
    config = _gateway_config(settings)
    assert [(u.name, u.url) for u in config.upstreams] == [("gpu2", "https://10.0.0.12:8000"),
                                                           ("10.0.0.13:8000", "https://10.0.0.13:8000")]
    assert str(config.upstream_tls.cert) == "/etc/deepfleet/tls/client.crt"
    assert str(config.audit.checkpoint_key) == "/etc/deepfleet/tls/audit-signing.key"
    assert str(config.audit.dir) == "/srv/audit"


def test_a_malformed_upstream_setting_names_the_fix():
    with pytest.raises(RoleError, match="gateway_upstreams"):
        gateway_yaml_context({**DEFAULTS, "gateway_upstreams": ["10.0.0.12"]}, "gpu1")


def test_the_ray_unit_writes_no_core_and_no_swap_either():
    unit = _unit(_render("systemd/deepfleet-ray.service.j2", role="head", model_name="m", service_user="svc",
                         service_group="svc", node_ip="10.0.0.1", network_interface="", exec_start="/bin/true",
                         ray="/srv/ray", state_dir="/var/lib/df"))["Service"]
    assert (unit["LimitCORE"], unit["MemorySwapMax"]) == ("0", "0")


def test_units_run_the_runtime_as_the_service_user_with_hardening():
    settings = {**DEFAULTS, "deepfleet_user": "svc", "deepfleet_home": "/srv/df"}
    for name, command in (("deepfleet-runtime", "serve"), ("deepfleet-gateway", "gateway")):
        unit = _unit(_render(f"systemd/{name}.service.j2", audit_dir="/var/lib/deepfleet/audit",
                             limit_nofile=settings["gateway_limit_nofile"], **unit_context(settings, "/etc/x.yaml")))
        service = unit["Service"]
        assert service["User"] == "svc"
        assert service["ExecStart"] == f"/srv/df/venv/bin/deepfleet-runtime {command} --config /etc/x.yaml"
        assert service["NoNewPrivileges"] == "yes"
        assert service["ProtectSystem"] == "strict"
        assert unit["Install"]["WantedBy"] == "multi-user.target"
        # keys, weights and prompts reach neither a core dump nor swap (docs/model-format.md)
        assert (service["LimitCORE"], service["MemorySwapMax"]) == ("0", "0"), name
    assert unit["Service"]["LimitNOFILE"] == "65536"  # the gateway's: a descriptor per client connection


def test_certificate_names_cover_the_host_its_address_and_extra_names():
    settings = {**DEFAULTS, "gateway_server_names": ["llm.hospital.internal"], "ssh_hostname": "10.1.2.3"}
    assert server_names(settings, "gw1", faces_clients=True) == sorted(
        ["gw1", "llm.hospital.internal", "10.1.2.3", "localhost", "127.0.0.1"])
    assert server_names(settings, "gpu1", faces_clients=False) == sorted(["gpu1", "10.1.2.3", "localhost", "127.0.0.1"])


def test_the_runtime_reads_model_keys_from_the_private_copy_its_unit_makes():
    settings = {**DEFAULTS, "deepfleet_user": "svc", "deepfleet_group": "svcg", "deepfleet_config_dir": "/etc/df"}
    unit = _unit(_render("systemd/deepfleet-runtime.service.j2", **unit_context(settings, "/etc/x.yaml")))["Service"]
    config = from_mapping(RuntimeConfig, yaml.safe_load(_render("runtime.yaml.j2", **runtime_yaml_context(settings, "/m"))),
                          "runtime.yaml")
    assert (unit["RuntimeDirectory"], unit["RuntimeDirectoryMode"]) == ("deepfleet-runtime", "0700")
    assert str(config.model.keys_dir) == "/run/deepfleet-runtime/keys"
    assert unit["ExecStartPre"] == ("+/opt/deepfleet/venv/bin/deepfleet-runtime model unseal-keys --keys-dir "
                                    "/etc/df/keys --to /run/deepfleet-runtime/keys --user svc")


def test_runtime_yaml_passes_vllm_extra_args_llamacpp_batch_and_cpu_kv_budget():
    settings = {**DEFAULTS, "runtime_vllm_extra_args": ["--enable-prefix-caching", "--max-num-seqs", "64"],
                "runtime_llamacpp_n_batch": 128, "runtime_cpu_kv_cache_bytes": 1 << 30,
                "runtime_decrypt_tmpfs_size": "200G"}
    context = runtime_yaml_context(settings, "/m")
    assert "decrypt_tmpfs_size" not in context  # how the unit is run, not runtime.yaml
    config = from_mapping(RuntimeConfig, yaml.safe_load(_render("runtime.yaml.j2", **context)), "runtime.yaml")
    assert config.vllm.extra_args == ["--enable-prefix-caching", "--max-num-seqs", "64"]
    assert (config.llamacpp.n_batch, config.memory.cpu_kv_cache_bytes) == (128, 1 << 30)


def test_gateway_routing_setting_becomes_the_routing_section():
    settings = {**DEFAULTS, "gateway_routing": {"health_interval_s": 0.5, "wait_for_replica_s": 30}}
    text = _render("gateway.yaml.j2", **gateway_yaml_context(settings, "gw1"))
    config = from_mapping(GatewayConfig, yaml.safe_load(text), "gateway.yaml")
    assert (config.routing.health_interval_s, config.routing.wait_for_replica_s) == (0.5, 30.0)
    defaults = from_mapping(GatewayConfig, yaml.safe_load(_render("gateway.yaml.j2", **gateway_yaml_context(DEFAULTS, "gw1"))),
                            "gateway.yaml")
    assert defaults.routing.health_interval_s == 2.0


def test_runtime_unit_gives_the_decrypted_release_a_sized_tmpfs_of_its_own_only_when_asked():
    unit = _unit(_render("systemd/deepfleet-runtime.service.j2",
                         **unit_context({**DEFAULTS, "runtime_decrypt_tmpfs_size": "200G"}, "/etc/deepfleet/runtime.yaml")))
    service = unit["Service"]
    assert service["TemporaryFileSystem"] == "/run/deepfleet-decrypted:size=200G,mode=1777,nosuid,nodev,noexec"
    assert "Environment=DEEPFLEET_DECRYPT_DIR=/run/deepfleet-decrypted" in _render(
        "systemd/deepfleet-runtime.service.j2", **unit_context({**DEFAULTS, "runtime_decrypt_tmpfs_size": "200G"}, "/c"))
    plain = _render("systemd/deepfleet-runtime.service.j2", **unit_context(DEFAULTS, "/etc/deepfleet/runtime.yaml"))
    assert "TemporaryFileSystem" not in plain and "DEEPFLEET_DECRYPT_DIR" not in plain


@pytest.mark.parametrize(("kernel", "noswap"), [
    ("6.1.0-18-amd64", False),  # Debian 12
    ("5.15.0-91-generic", False),  # Ubuntu 22.04 GA
    ("5.14.0-427.13.1.el9_4.x86_64", False),  # Rocky/RHEL 9
    ("6.4.0", True), ("6.8.0-45-generic", True), ("6.18.44-fc-v1300", True), ("7.0", True)])
def test_tmpfs_noswap_is_asked_for_only_from_linux_6_4_which_added_it(kernel, noswap):
    assert tmpfs_noswap(kernel) is noswap


def test_the_decrypted_releases_own_tmpfs_is_noswap_where_the_kernel_has_it_and_mounts_so(tmp_path):
    settings = {**DEFAULTS, "runtime_decrypt_tmpfs_size": "1M"}
    unit = _unit(_render("systemd/deepfleet-runtime.service.j2", **unit_context(settings, "/c", noswap=True)))
    path, options = unit["Service"]["TemporaryFileSystem"].split(":", 1)
    assert "noswap" in options.split(",")
    old = _unit(_render("systemd/deepfleet-runtime.service.j2", **unit_context(settings, "/c", noswap=False)))
    assert "noswap" not in old["Service"]["TemporaryFileSystem"]  # an older kernel refuses the whole mount
    if not tmpfs_noswap(os.uname().release) or os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("mounting needs root and Linux 6.4+")
    # The kernel takes these options as systemd hands them over (flags as flags, the rest as data):
    flags = [o for o in options.split(",") if o in ("nosuid", "nodev", "noexec")]
    data = ",".join(o for o in options.split(",") if o not in flags)
    (tmp_path / "m").mkdir()
    mounted = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o {','.join(flags)},{data} tmpfs "
                              f"{tmp_path / 'm'} && grep ' {tmp_path / 'm'} ' /proc/self/mountinfo"],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, mounted.stderr
    assert "noswap" in mounted.stdout.split(" - ")[1]
