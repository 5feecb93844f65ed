"""Settings of inventories/dual_a100.py (group `dual_a100`). Every default: roles/defaults.py."""

# --- how deepfleet reaches the host ----------------------------------------------------------------
ssh_user = "admin"
_sudo = True

# --- GPU platform ------------------------------------------------------------------------------------
nvidia_driver_branch = "580"  # the runtime's CUDA wheels (torch for CUDA 13.0) need 580+
nvidia_driver_open_kernel_modules = True  # A100 (Ampere) supports NVIDIA's open modules
cuda_version = "13.0"
# A mirror or an offline repository is one key per repository:
cuda_repo_base_url = "https://developer.download.nvidia.com/compute/cuda/repos"
docker_repo_base_url = "https://download.docker.com/linux"
nvidia_container_toolkit_repo_base_url = "https://nvidia.github.io/libnvidia-container"
docker_registry_mirrors = []  # e.g. ["https://registry.example.internal"] when Docker Hub is out of reach
docker_data_root = None  # e.g. "/data/docker": images are large
verify_gpu_count = 2  # deploys/verify.py fails the host unless nvidia-smi and a CUDA container see 2

# --- model -------------------------------------------------------------------------------------------
model_name = "deepseek-llm-67b-chat"  # what clients pass as "model"
model_source = "/models/deepseek-llm-67b-chat-awq"  # on the control machine: the AWQ int4 checkpoint

# --- runtime: vLLM across both GPUs, in a container ----------------------------------------------------
runtime_mode = "docker"
runtime_engine = "vllm"
runtime_vllm_tensor_parallel_size = 2  # one shard per A100
runtime_quantization = "int4"  # AWQ weights: ~35 GB of the 160 GB, the rest is KV cache
runtime_quantization_method = "awq"
runtime_device = "cuda"
runtime_dtype = "float16"
runtime_wheel_extras = ["vllm"]
# deepseek-llm-67b has a 4,096-token context: a prompt and its answer share it (vLLM's max_model_len)
runtime_max_prompt_tokens = 3072
runtime_max_tokens = 1024
runtime_container_shm_size = "32g"  # vLLM's tensor-parallel workers talk through /dev/shm

# --- gateway -----------------------------------------------------------------------------------------
gateway_port = 8443
gateway_server_names = ["llm.example.internal"]  # names clients use, besides the host's
