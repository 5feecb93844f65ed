"""Every role's settings and their defaults, in one place. An inventory overrides any of them by
name, in host or group data (e.g. `("gpu1", {"runtime_port": 9000})`).

Settings are prefixed with the role that reads them. Paths marked "control" are on the machine
that runs the deploy (relative ones are taken from the project root); all others are on hosts.
Host data with one of these prefixes that is not a setting below is refused before a deploy
starts (roles/settings.py), so a misspelt setting never silently leaves its default in force.
"""

ROLE_PREFIXES = ("base_", "deepfleet_", "nvidia_driver_", "cuda_", "docker_", "nvidia_container_toolkit_",
                 "verify_", "model_", "runtime_", "gateway_", "firewall_", "bundle_", "ray_",
                 "rollout_")

DEFAULTS = {
    # --- base: service account and directories -------------------------------------------------
    "deepfleet_user": "deepfleet",  # system user the services run as
    "deepfleet_group": "deepfleet",
    "deepfleet_home": "/opt/deepfleet",  # venv, wheelhouse, models
    "deepfleet_config_dir": "/etc/deepfleet",  # runtime.yaml, gateway.yaml, tls/, api_keys.json
    "deepfleet_state_dir": "/var/lib/deepfleet",  # writable by the service user
    "base_packages": ["ca-certificates"],  # besides the runtime's Python, which roles/hostos.py picks per OS
    "deepfleet_cache_dir": ".deepfleet/cache",  # control: wheelhouses and manifests

    # === GPU host platform: NVIDIA driver, CUDA, Docker, NVIDIA container toolkit ==================
    # roles/nvidia_driver.py, cuda.py, docker.py, nvidia_container_toolkit.py (run by deploys/site.py
    # after base). Every URL of a repository is derived from its ONE *_repo_base_url setting: point
    # it at a mirror or an offline repository and the key, the package lists and the packages follow.
    # The NVIDIA roles skip themselves, with a message, on hosts without an NVIDIA PCI device.

    # --- nvidia_driver ---------------------------------------------------------------------------
    "nvidia_driver_branch": "570",  # pinned driver branch (major version); verify checks it. A runtime on
    #   CUDA (runtime_device cuda, engine vllm) needs 580+: its torch is a CUDA 13.0 build
    "nvidia_driver_source": "cuda_repo",  # cuda_repo: NVIDIA's CUDA repository (every OS) |
    #   distro: Ubuntu's nvidia-headless-<branch>-server, or Debian 12's non-free nvidia-driver
    "nvidia_driver_open_kernel_modules": True,  # NVIDIA's open modules (Turing and newer); False: proprietary
    "nvidia_driver_persistenced": True,  # keep GPUs initialised between jobs (nvidia-persistenced)
    "nvidia_driver_reboot": True,  # reboot when a new module cannot be loaded; False: fail and say so
    "nvidia_driver_reboot_timeout_s": 900,
    "nvidia_driver_debian_mirror_url": "http://deb.debian.org/debian",  # Debian + distro source: non-free

    # --- cuda: the toolkit (NVIDIA's CUDA repository also carries the driver) ----------------------
    "cuda_repo_base_url": "https://developer.download.nvidia.com/compute/cuda/repos",
    "cuda_toolkit_install": True,  # False: driver only (containers bring their own CUDA runtime)
    "cuda_version": "12.8",  # cuda-toolkit-12-8 in /usr/local/cuda-12.8, on PATH via /etc/profile.d
    "cuda_source": "cuda_repo",  # cuda_repo | distro (the OS's nvidia-cuda-toolkit, its own version)

    # --- docker ------------------------------------------------------------------------------------
    "docker_enabled": "auto",  # auto: on hosts with runtime_mode docker or an NVIDIA GPU | True | False
    "docker_source": "docker_ce",  # docker_ce: Docker's repository | distro: the OS's docker.io
    "docker_repo_base_url": "https://download.docker.com/linux",
    "docker_ce_packages": ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin"],
    "docker_log_max_size": "100m",  # daemon.json: json-file log rotation per container
    "docker_log_max_file": 3,
    "docker_default_shm_size": "1G",
    "docker_live_restore": True,  # containers keep running while dockerd restarts
    "docker_registry_mirrors": [],  # e.g. ["https://registry.hospital.internal"] (Docker Hub mirror)
    "docker_data_root": None,  # e.g. "/data/docker" on hosts with a big data disk

    # --- nvidia_container_toolkit ------------------------------------------------------------------
    "nvidia_container_toolkit_repo_base_url": "https://nvidia.github.io/libnvidia-container",
    "nvidia_container_toolkit_version": "1.17.8",  # pinned; None installs the newest
    "nvidia_container_toolkit_default_runtime": False,  # True: every container gets the nvidia runtime
    "nvidia_container_toolkit_test_image": "nvidia/cuda:12.8.1-base-ubuntu24.04",  # smoke test

    # --- verify (deploys/verify.py): what a provisioned host must show --------------------------------
    "verify_gpu_count": None,  # GPUs nvidia-smi and a CUDA container must see (None: the PCI count)

    # --- model: what is served, encrypted at rest (docs/model-format.md) --------------------------
    "model_name": "tiny-deepseek-v3",  # the name clients pass as "model"
    "model_source": None,  # control (required): a model directory (config.json, weights, tokenizer),
    #                        encrypted once into the cache, or a release from `deepfleet model encrypt`
    "model_keys_dir": ".deepfleet/model-keys",  # control: KEKs + signing key (`deepfleet model keys create`)
    "model_keep_releases": 3,  # releases kept on each host for rollback, the current one included
    "model_push_max_rate_mb_s": None,  # cap on each host's push bandwidth in MB/s (None: as fast as SSH goes)
    "model_push_transport": "ssh",  # "ssh": the system's ssh client (SFTP where it cannot log in as
    #                                 pyinfra does); "sftp": pyinfra's own connection (slower)

    # --- runtime: the inference server (loopback only); see docs/runtime.md ------------------------
    "runtime_port": 8000,
    "runtime_engine": "transformers",  # transformers | vllm (CUDA GPUs) | llamacpp (a .gguf model file)
    "runtime_device": "cpu",  # "cuda" on GPU hosts ("cuda:1" for the second GPU)
    "runtime_dtype": "float32",  # float32 | bfloat16 | float16 | auto
    "runtime_quantization": "none",  # none | bf16 | int8 | int4 | fp8 (fp8: vllm on Ada/Hopper)
    "runtime_quantization_method": "auto",  # auto | torchao | bitsandbytes | awq | gptq | gguf
    "runtime_reasoning_parser": "none",  # deepseek_r1: <think>…</think> -> reasoning_content
    "runtime_max_prompt_tokens": 4096,
    "runtime_max_tokens": 1024,
    "runtime_default_max_tokens": 256,
    "runtime_max_batch_size": 32,  # requests decoded together
    "runtime_max_batch_tokens": 4096,  # prompt tokens prefilled per step
    "runtime_kv_cache_tokens": 0,  # 0 = derive from memory (GPU fraction, or the CPU budget)
    "runtime_gpu_memory_fraction": 0.9,
    "runtime_pytorch_cuda_alloc_conf": "expandable_segments:True",
    "runtime_vllm_tensor_parallel_size": 1,
    "runtime_vllm_pipeline_parallel_size": 1,
    "runtime_vllm_max_model_len": 0,  # 0 = max_prompt_tokens + max_tokens, capped by the model's context
    "runtime_vllm_tool_call_parser": "deepseek_v3",  # vLLM's parser for tool calls; "" = no tools
    "runtime_vllm_liveness_interval_s": 30,  # a one-token generation probes the vllm child this often
    "runtime_vllm_liveness_timeout_s": 60,  # two probes slower than this in a row restart the child
    "runtime_vllm_ray_address": "",  # "head:6379" for multi-node
    "runtime_vllm_port": 8100,  # the vllm child, 127.0.0.1 only
    "runtime_llamacpp_n_ctx": 4096,
    "runtime_llamacpp_n_threads": 0,  # 0 = llama-cpp-python's default
    "runtime_ready_timeout_s": 600,  # how long a deploy waits for the model to load
    "runtime_wheel_extras": ["transformers"],  # engine extras: + quantization (int8/int4), llamacpp, vllm

    # --- gateway: what clients talk to (TLS 1.3, API keys, limits, audit; docs/gateway.md) -----
    "gateway_listen_address": "0.0.0.0",
    "gateway_port": 8443,
    "gateway_server_names": [],  # extra DNS names / IPs in the certificate (host name always in)
    "gateway_pki_dir": ".deepfleet/pki",  # control: the CA (`deepfleet pki init`) and host certs
    "gateway_api_keyring": ".deepfleet/api-keys.json",  # control: key ids + hashes, never keys
    # Runtime replicas behind this gateway, [{"name": "gpu2", "url": "https://10.0.0.12:8000"}];
    # empty = this host's runtime on loopback. https:// replicas are reached with mutual TLS.
    "gateway_upstreams": [],
    "gateway_metrics_port": 9464,  # Prometheus metrics, on 127.0.0.1 only
    "gateway_admin_socket": "/run/deepfleet-gateway/admin.sock",  # drain/undrain (root + service user)
    "gateway_max_body_bytes": 1048576,
    "gateway_max_in_flight": 64,  # requests forwarded at once; more wait in the queue
    "gateway_max_queued": 256,  # when this many wait, new requests get 503 at once
    "gateway_queue_timeout_s": 30,
    "gateway_default_rpm": 600,  # per-key limits for keys created without their own; 0 = unlimited
    "gateway_default_tpm": 600000,
    "gateway_default_concurrency": 16,
    "gateway_audit_dir": None,  # default: <deepfleet_state_dir>/audit
    "gateway_audit_content": "full",  # "full" (prompts and completions) or "sha256" (hashes only)
    "gateway_audit_rotate_mb": 64,  # and a new file each UTC day
    "gateway_audit_retention_days": 0,  # 0 = keep every file
    "gateway_audit_signing": False,  # Ed25519-signed checkpoints; the public key stays in gateway_pki_dir
    "gateway_audit_checkpoint_every": 1000,

    # --- firewall (nftables): only SSH and the gateway port, from the networks listed ------------
    "firewall_enabled": False,  # opt in; when on, both source lists below must be set
    "firewall_ssh_port": None,  # default: the inventory's ssh_port, else 22
    "firewall_ssh_sources": [],  # CIDRs allowed to reach SSH, e.g. ["10.0.0.0/24"]
    "firewall_gateway_sources": [],  # CIDRs allowed to reach the gateway port
    "firewall_runtime_sources": [],  # CIDRs of gateways on other hosts that reach this runtime (mTLS)

    # === runtime, Docker mode (roles/runtime.py, roles/runtime_container.py) =========================
    "runtime_mode": "systemd",  # systemd: venv + unit on the host | docker: the engine in a container
    "runtime_image_source": "build",  # build: on the host from templates/Dockerfile.runtime.j2 |
    #   tarball: `docker load` of runtime_image_tarball (for hosts that reach no registry)
    "runtime_image_tarball": None,  # control: a `docker save` tarball of a runtime image
    "runtime_image_base_gpu": "nvidia/cuda:12.8.1-runtime-ubuntu24.04",  # base on NVIDIA hosts
    "runtime_image_base_gpu_os": "ubuntu-24.04",  # its OS: decides the Python the wheels are for
    "runtime_image_base_cpu": "debian:12-slim",  # base on hosts without an NVIDIA GPU
    "runtime_image_base_cpu_os": "debian-12",
    "runtime_container_gpus": "all",  # docker run --gpus (NVIDIA hosts only), e.g. "device=0,1"
    "runtime_container_shm_size": "16g",
    "runtime_container_memlock": "-1:-1",  # docker run --ulimit memlock (soft:hard bytes; -1: unlimited)
    "runtime_container_restart": "unless-stopped",  # docker's restart policy

    # === fleet: topology, releases, rolling updates (roles/topology.py, roles/release.py, ray.py) ====
    # Inventory groups: `gpu_nodes` hold the model and serve it, `gateways` face clients and route to
    # every replica (one host can be both; without these groups every host serves alone, on loopback).
    # Replicas on other hosts than a gateway serve mutual TLS on runtime_address. docs/rollout.md.
    "runtime_address": None,  # where gateways and Ray peers reach this host (default: ssh_hostname)
    "runtime_keep_releases": 3,  # runtime releases kept per host (model + runtime + config), current included
    "rollout_drain_timeout_s": 120,  # `deepfleet rollout`: how long in-flight requests may take to finish
    "rollout_healthy_timeout_s": 120,  # ... for a converged replica to be healthy at every gateway
    "rollout_smoke_prompt": "Say hello.",  # ... the smoke completion sent through each gateway
    "rollout_smoke_max_tokens": 8,

    # --- ray: one model over several hosts (vLLM tensor x pipeline parallel); roles/ray.py ----------
    # Give every node of a multi-node model group `ray_head` (the inventory name of its head): the
    # head runs the runtime (vLLM with the Ray backend), the workers join its cluster.
    "ray_head": None,  # None: this host serves its model alone
    "ray_port": 6379,  # the head's GCS port
    "ray_node_manager_port": 6380,
    "ray_object_manager_port": 6381,
    "ray_client_server_port": 10001,  # on the head
    "ray_metrics_export_port": 6382,
    "ray_dashboard_agent_port": 6383,  # HTTP and gRPC (+1) of each node's agent
    "ray_runtime_env_agent_port": 6385,
    "ray_min_worker_port": 10002,  # the workers' port range
    "ray_max_worker_port": 10999,
    "ray_network_interface": None,  # NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME, e.g. "ens8" (the internal NIC)

    # === air-gapped installs: one signed bundle (deepfleet/bundle/, roles/bundle.py; docs/air-gapped.md) ===
    # Set bundle_dir and the site deploy verifies the bundle (refused before any host changes if a file
    # or the signature is wrong), then hosts install only from it: its apt repository is their one
    # package source, wheels with --no-index, images with docker load; nothing contacts the outside.
    "bundle_dir": None,  # control: a bundle from `deepfleet bundle build INVENTORY --out DIR`
    "bundle_trusted_key": ".deepfleet/bundle-keys/bundle-signing.asc",  # control: the signer's public key
    # What `deepfleet bundle build` needs to know of hosts it cannot reach (the deploy reads facts):
    "bundle_host_os": None,  # e.g. "debian-12", "ubuntu-22.04" (required to build a bundle)
    "bundle_host_machine": "x86_64",  # uname -m: x86_64 | aarch64
    "bundle_host_gpu": False,  # the host has an NVIDIA GPU: the driver, CUDA and toolkit packages go in
    "bundle_host_kernel": None,  # GPU hosts: `uname -r` (the driver is built against its headers)
    "bundle_resolver_images": {  # per OS, a container image whose package manager resolves the closure
        "debian-12": "debian:12", "ubuntu-22.04": "ubuntu:22.04", "ubuntu-24.04": "ubuntu:24.04",
        "rocky-9": "rockylinux:9",
    },
}
