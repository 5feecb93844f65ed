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

    # --- model: what is served and where it lands ------------------------------------------------
    "model_name": "tiny-deepseek-v3",  # the name clients pass as "model"
    "model_source": None,  # control: directory with config.json, weights, tokenizer (required)

    # --- runtime: the inference server (loopback only); see docs/runtime.md ------------------------
    "runtime_port": 8000,
    "runtime_engine": "transformers",  # transformers | vllm (CUDA GPUs) | llamacpp (a .gguf model file)
    "runtime_device": "cpu",  # "cuda" on GPU hosts ("cuda:1" for the second GPU)
    "runtime_dtype": "float32",  # float32 | bfloat16 | float16 | auto
    "runtime_quantization": "none",  # none | bf16 | int8 | int4 | fp8 (fp8: vllm on Ada/Hopper)
    "runtime_quantization_method": "auto",  # auto | torchao | bitsandbytes | awq | gptq | gguf
    "runtime_reasoning_parser": "none",  # deepseek_r1: <think>…</think> -> reasoning_content
    "runtime_max_prompt_tokens": 4096,
    "runtime_max_tokens": 1024,
    "runtime_default_max_tokens": 256,
    "runtime_max_batch_size": 32,  # requests decoded together
    "runtime_max_batch_tokens": 4096,  # prompt tokens prefilled per step
    "runtime_kv_cache_tokens": 0,  # 0 = derive from memory (GPU fraction, or the CPU budget)
    "runtime_gpu_memory_fraction": 0.9,
    "runtime_pytorch_cuda_alloc_conf": "expandable_segments:True",
    "runtime_vllm_tensor_parallel_size": 1,
    "runtime_vllm_pipeline_parallel_size": 1,
    "runtime_vllm_max_model_len": 0,  # 0 = the model's own
    "runtime_vllm_ray_address": "",  # "head:6379" for multi-node
    "runtime_vllm_port": 8100,  # the vllm child, 127.0.0.1 only
    "runtime_llamacpp_n_ctx": 4096,
    "runtime_llamacpp_n_threads": 0,  # 0 = llama-cpp-python's default
    "runtime_ready_timeout_s": 600,  # how long a deploy waits for the model to load
    "runtime_wheel_extras": ["transformers"],  # engine extras: + quantization (int8/int4), llamacpp, vllm

    # --- gateway: what clients talk to (TLS 1.3, API keys) ---------------------------------------
    "gateway_listen_address": "0.0.0.0",
    "gateway_port": 8443,
    "gateway_server_names": [],  # extra DNS names / IPs in the certificate (host name always in)
    "gateway_pki_dir": ".deepfleet/pki",  # control: the CA (`deepfleet pki init`) and host certs
    "gateway_api_keyring": ".deepfleet/api-keys.json",  # control: key ids + hashes, never keys
}
