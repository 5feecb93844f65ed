"""Settings every host of inventories/hospital.py shares (group `hospital`). Defaults: roles/defaults.py."""

# --- how deepfleet reaches the hosts ---------------------------------------------------------------
ssh_user = "admin"
_sudo = True

# --- air-gapped: everything from one signed bundle -------------------------------------------------
bundle_dir = "/srv/deepfleet/bundle"  # control: where the carried-in bundle is copied
bundle_trusted_key = "<state>/bundle-keys/bundle-signing.asc"  # control: the signer's public key ($DEEPFLEET_HOME/...)
bundle_host_os = "debian-12"  # what `deepfleet bundle build` resolves packages for (hosts are out of reach)
bundle_host_machine = "x86_64"

# --- model: encrypted outside, pushed from the bundle ------------------------------------------------
model_name = "deepseek-r1-distill-qwen-32b"
model_source = "/models/DeepSeek-R1-Distill-Qwen-32B"  # on the build machine (inside, the bundle's release)
model_keys_dir = "<state>/model-keys"  # carried in apart from the bundle (the KEKs open the release)

# --- gateway: TLS names, audit and retention -----------------------------------------------------------
gateway_server_names = ["llm.hospital.internal"]
# Audit that stores hashes only, with a retention period (docs/gateway.md: the audit format)
gateway_audit_content = "sha256"  # prompts and completions as SHA-256 only, never their text
gateway_audit_retention_days = 90  # audit files older than this are deleted
gateway_audit_signing = True  # Ed25519-signed checkpoints, verifiable offline

# --- the site's network: time, and (where hosts reach an internal mirror) its proxy and CA ----------
ntp_servers = ["ntp1.hospital.internal", "ntp2.hospital.internal"]  # chrony asks only these (verify reports offset)
# With internal mirrors instead of (or beside) the bundle, behind the hospital's proxy and CA:
# proxy_http = proxy_https = "http://proxy.hospital.internal:3128"
# proxy_no_proxy = ["localhost", "127.0.0.1", "mirror.hospital.internal", ".hospital.internal"]
# trust_ca_certificates = ["site/hospital-root-ca.pem"]   # control: into the hosts' trust store and Docker's

# --- where the bytes go: models, kept releases, staging and the audit log on the data disk -------------
deepfleet_models_dir = "/data/deepfleet/models"  # `deepfleet plan` checks its free space before any push
gateway_audit_dir = "/data/deepfleet/audit"
docker_data_root = "/data/docker"  # hosts that run Docker (the GPU nodes): images on the data disk too

# --- logs and the SIEM -----------------------------------------------------------------------------
logs_journald_max_use = "4G"  # the journal (every deepfleet unit's logs) never grows past this
# Every gateway's audit records to the SIEM over TLS (RFC 5424 + RFC 5425), by the hosts' rsyslog:
# siem_syslog_target = "siem.hospital.internal:6514"
# siem_syslog_ca = "site/siem-ca.pem"   # control: the CA of the collector's certificate
