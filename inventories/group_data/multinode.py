"""Settings of inventories/multinode.py (group `multinode`: every host). Every default: roles/defaults.py."""

# --- how deepfleet reaches the hosts ---------------------------------------------------------------
ssh_user = "admin"
_sudo = True

# --- GPU platform --------------------------------------------------------------------------------------
nvidia_driver_branch = "580"  # the runtime's CUDA wheels (torch for CUDA 13.0) need 580+
nvidia_driver_open_kernel_modules = True
cuda_version = "13.0"
docker_enabled = False
verify_gpu_count = 8

# --- model: one copy on each node (each pipeline stage loads its layers from it) -----------------------
model_name = "deepseek-v3"
model_source = "/models/deepseek-v3"  # on the control machine: the fp8 checkpoint

# --- one model over both nodes: a Ray cluster headed by h100-a ---------------------------------------
ray_head = "h100-a"
ray_network_interface = None  # e.g. "ens8": the NIC of the cluster network (NCCL, Gloo); then give each
# node its address there: ray_node_address in inventories/multinode.py (default: runtime_address)

# --- runtime: vLLM on the Ray head; parallelism from the capacity planner ------------------------------
runtime_mode = "systemd"
runtime_engine = "vllm"
runtime_device = "cuda"
runtime_dtype = "bfloat16"
runtime_quantization = "fp8"
runtime_wheel_extras = ["vllm"]
runtime_decrypt_tmpfs_size = "760G"  # each node decrypts the ~700 GB release into memory (2 TB RAM per node)
runtime_max_tokens = 4096
runtime_ready_timeout_s = 3600  # 700 GB of weights

# --- gateway -----------------------------------------------------------------------------------------
gateway_port = 8443
gateway_server_names = ["deepseek.example.internal"]
