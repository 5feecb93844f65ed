"""Settings of the GPU nodes of inventories/hospital.py (group `hospital_gpu`). Defaults: roles/defaults.py."""

# --- what the bundle build must know of these hosts ---------------------------------------------------
bundle_host_gpu = True  # the driver, CUDA and the container toolkit go into the bundle
bundle_host_kernel = "6.1.0-28-amd64"  # `uname -r` on the nodes: the driver is built against its headers

# --- GPU platform: two L40S per node -------------------------------------------------------------------
nvidia_driver_branch = "580"  # the runtime's CUDA wheels (torch for CUDA 13.0) need 580+
cuda_version = "13.0"
verify_gpu_count = 2

# --- runtime: vLLM across both GPUs, under systemd -------------------------------------------------------
runtime_mode = "systemd"
runtime_engine = "vllm"
runtime_device = "cuda"
runtime_dtype = "bfloat16"
runtime_vllm_tensor_parallel_size = 2  # 32B in bf16 (~64 GB) over 2 x 48 GB
runtime_wheel_extras = ["vllm"]
runtime_decrypt_tmpfs_size = "80G"  # vLLM reads the decrypted 64 GB from memory; /run is only 10% of RAM
runtime_reasoning_parser = "deepseek_r1"  # R1 distills think first: <think>…</think> -> reasoning_content
runtime_max_prompt_tokens = 8192
runtime_max_tokens = 2048
