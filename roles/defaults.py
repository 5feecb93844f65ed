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

    # --- model: what is served, encrypted at rest (docs/model-format.md) --------------------------
    "model_name": "tiny-deepseek-v3",  # the name clients pass as "model"
    "model_source": None,  # control (required): a model directory (config.json, weights, tokenizer),
    #                        encrypted once into the cache, or a release from `deepfleet model encrypt`
    "model_keys_dir": ".deepfleet/model-keys",  # control: KEKs + signing key (`deepfleet model keys create`)
    "model_keep_releases": 3,  # releases kept on each host for rollback, the current one included
    "model_push_max_rate_mb_s": None,  # cap on each host's push bandwidth in MB/s (None: as fast as SSH goes)
    "model_push_transport": "ssh",  # "ssh": the system's ssh client (SFTP where it cannot log in as
    #                                 pyinfra does); "sftp": pyinfra's own connection (slower)

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

    # --- gateway: what clients talk to (TLS 1.3, API keys) ---------------------------------------
    "gateway_listen_address": "0.0.0.0",
    "gateway_port": 8443,
    "gateway_server_names": [],  # extra DNS names / IPs in the certificate (host name always in)
    "gateway_pki_dir": ".deepfleet/pki",  # control: the CA (`deepfleet pki init`) and host certs
    "gateway_api_keyring": ".deepfleet/api-keys.json",  # control: key ids + hashes, never keys
}
