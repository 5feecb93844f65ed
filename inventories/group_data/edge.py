"""Settings of inventories/edge.py (group `edge`). Every default: roles/defaults.py."""

# --- how deepfleet reaches the host ----------------------------------------------------------------
ssh_user = "admin"
_sudo = True

# --- platform: nothing GPU, no Docker ------------------------------------------------------------------
docker_enabled = False

# --- model: a 4-bit GGUF file that fits in the board's 8 GB ---------------------------------------------
model_name = "deepseek-r1-distill-qwen-1.5b"
model_source = "/models/deepseek-r1-distill-qwen-1.5b-q4_0-gguf"  # on the control machine

# --- runtime: llama.cpp on the CPU ---------------------------------------------------------------------
runtime_mode = "systemd"
runtime_engine = "llamacpp"
runtime_device = "cpu"
runtime_quantization = "q4_0"
runtime_wheel_extras = ["llamacpp"]
runtime_max_prompt_tokens = 2048
runtime_max_tokens = 512

# --- gateway -----------------------------------------------------------------------------------------
gateway_port = 8443
