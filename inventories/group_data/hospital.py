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
