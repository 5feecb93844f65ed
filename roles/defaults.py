"""Every role's settings and their defaults, in one place. An inventory overrides any of them by
name, in host or group data (e.g. `("gpu1", {"runtime_port": 9000})`).

Settings are prefixed with the role that reads them. Paths marked "control" are on the machine
that runs the deploy (relative ones are taken from the project root); all others are on hosts.
"""

DEFAULTS = {
    # --- base: service account and directories -------------------------------------------------
    "deepfleet_user": "deepfleet",  # system user the services run as
    "deepfleet_group": "deepfleet",
    "deepfleet_home": "/opt/deepfleet",  # venv, wheelhouse, models
    "deepfleet_config_dir": "/etc/deepfleet",  # runtime.yaml, gateway.yaml, tls/, api_keys.json
    "deepfleet_state_dir": "/var/lib/deepfleet",  # writable by the service user
    "base_packages": ["python3", "python3-venv", "ca-certificates"],
    "deepfleet_cache_dir": ".deepfleet/cache",  # control: wheelhouses and manifests

    # --- model: what is served and where it lands ------------------------------------------------
    "model_name": "tiny-deepseek-v3",  # the name clients pass as "model"
    "model_source": None,  # control: directory with config.json, weights, tokenizer (required)

    # --- runtime: the inference server (loopback only) ---------------------------------------------
    "runtime_port": 8000,
    "runtime_engine": "transformers",
    "runtime_device": "cpu",  # "cuda" on GPU hosts
    "runtime_dtype": "float32",  # float32 | bfloat16 | float16 | auto
    "runtime_max_prompt_tokens": 4096,
    "runtime_max_tokens": 1024,
    "runtime_default_max_tokens": 256,
    "runtime_ready_timeout_s": 600,  # how long a deploy waits for the model to load
    "runtime_wheel_extras": ["transformers"],  # engine extras installed from the wheelhouse

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
}
