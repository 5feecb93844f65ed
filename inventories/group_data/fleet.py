"""Settings of inventories/fleet.py (group `fleet`: every host). Every default: roles/defaults.py.
gateway_* settings apply on the gateways, model_*/runtime_* on the GPU nodes."""

# --- how deepfleet reaches the hosts ---------------------------------------------------------------
ssh_user = "admin"
_sudo = True

# --- network isolation: SSH from the admin network, the gateway port from the clients' network;
#     runtimes admit only the gateways (derived from the inventory), Ray only its cluster ---------
firewall_enabled = True
firewall_ssh_sources = ["10.0.9.0/24"]  # where `deepfleet` runs from
firewall_gateway_sources = ["10.20.0.0/16"]  # the clients

# --- GPU platform (on the GPU nodes; the gateways have no NVIDIA device and skip it) ----------------
nvidia_driver_branch = "580"  # the runtime's CUDA wheels (torch for CUDA 13.0) need 580+
nvidia_driver_open_kernel_modules = True
cuda_version = "13.0"
cuda_repo_base_url = "https://developer.download.nvidia.com/compute/cuda/repos"  # or your mirror
docker_enabled = False  # the runtime runs under systemd here (mutual TLS needs the systemd mode)
verify_gpu_count = 2

# --- model -------------------------------------------------------------------------------------------
model_name = "deepseek-llm-67b-chat"
model_source = "/models/deepseek-llm-67b-chat-awq"  # on the control machine; change it, then `deepfleet rollout`
model_keep_releases = 3

# --- runtime: vLLM over both A100s of each node ------------------------------------------------------
runtime_mode = "systemd"
runtime_engine = "vllm"
runtime_device = "cuda"
runtime_dtype = "float16"
runtime_quantization = "int4"
runtime_quantization_method = "awq"
runtime_vllm_tensor_parallel_size = 2
runtime_wheel_extras = ["vllm"]
runtime_max_prompt_tokens = 4096
runtime_max_tokens = 2048
runtime_port = 8000  # on each node's address, mutual TLS: only the gateways' client certificates
runtime_ready_timeout_s = 900  # a 67B model takes minutes to load
runtime_keep_releases = 3  # releases (model + runtime + config) kept on each node for rollback

# --- gateways ----------------------------------------------------------------------------------------
gateway_port = 8443
gateway_server_names = ["llm.example.internal"]  # the name clients use (DNS round robin over gw1, gw2)
gateway_audit_content = "sha256"
gateway_audit_signing = True

# --- rolling updates (deepfleet rollout) --------------------------------------------------------------
rollout_drain_timeout_s = 300  # long generations get this long to finish before a node restarts
rollout_healthy_timeout_s = 120
rollout_smoke_prompt = "Say hello."
rollout_smoke_max_tokens = 8
