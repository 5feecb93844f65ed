"""Settings of inventories/rtx4090.py (group `rtx4090`). Every default: roles/defaults.py."""

# --- how deepfleet reaches the host ----------------------------------------------------------------
ssh_user = "admin"
_sudo = True

# --- GPU platform ------------------------------------------------------------------------------------
nvidia_driver_branch = "580"  # the runtime's CUDA wheels (torch for CUDA 13.0) need 580+
nvidia_driver_source = "distro"  # Ubuntu's nvidia-headless-580-server(-open) packages
nvidia_driver_open_kernel_modules = True  # Ada (RTX 40xx) supports NVIDIA's open modules
cuda_version = "13.0"
cuda_repo_base_url = "https://developer.download.nvidia.com/compute/cuda/repos"
docker_repo_base_url = "https://download.docker.com/linux"
nvidia_container_toolkit_repo_base_url = "https://nvidia.github.io/libnvidia-container"
verify_gpu_count = 1

# --- model -------------------------------------------------------------------------------------------
model_name = "deepseek-llm-7b-chat"
model_source = "/models/deepseek-llm-7b-chat"  # on the control machine: the bf16 checkpoint

# --- runtime: transformers on the GPU, weights quantised to int8 at load -------------------------------
runtime_mode = "systemd"
runtime_engine = "transformers"
runtime_device = "cuda"
runtime_dtype = "bfloat16"
runtime_quantization = "int8"  # 7B in int8: ~7.5 GB of 24 GB
runtime_wheel_extras = ["transformers", "quantization"]  # int8 needs the quantization extra
runtime_max_prompt_tokens = 4096
runtime_max_tokens = 1024

# --- gateway -----------------------------------------------------------------------------------------
gateway_port = 8443
gateway_server_names = []
