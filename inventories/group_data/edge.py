"""Settings of inventories/edge.py (group `edge`). Every default: roles/defaults.py."""

# --- how deepfleet reaches the host ----------------------------------------------------------------
ssh_user = "admin"
_sudo = True

# --- platform: nothing GPU, no Docker ------------------------------------------------------------------
docker_enabled = False

# --- model: a 4-bit GGUF file that fits in the board's 8 GB ---------------------------------------------
model_name = "deepseek-r1-distill-qwen-1.5b"
# On the control machine: a directory holding one .gguf file (no config.json needed), made with
# `deepfleet-runtime convert-gguf MODEL_DIR --out DIR/model-q4_0.gguf --type q4_0` or downloaded.
model_source = "/models/deepseek-r1-distill-qwen-1.5b-q4_0-gguf"

# --- runtime: llama.cpp on the CPU ---------------------------------------------------------------------
runtime_mode = "systemd"
runtime_engine = "llamacpp"
runtime_device = "cpu"
runtime_quantization = "none"  # llama.cpp: the GGUF file's own type (q4_0 here) decides
runtime_reasoning_parser = "deepseek_r1"  # R1 distills think first: <think>…</think> -> reasoning_content
runtime_wheel_extras = ["llamacpp"]
runtime_decrypt_tmpfs_size = "2G"  # the ~1.1 GB GGUF is decrypted into memory; /run is 10% of the 8 GB
runtime_max_prompt_tokens = 2048
runtime_max_tokens = 512

# --- gateway -----------------------------------------------------------------------------------------
gateway_port = 8443
