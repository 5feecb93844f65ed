"""One Ubuntu 22.04 box with two A100-80GB: DeepSeek LLM 67B chat, int4 (AWQ), vLLM, tensor parallel 2.

    pyinfra inventories/dual_a100.py deploys/site.py --dry --diff   # every change, before any
    pyinfra inventories/dual_a100.py deploys/site.py -y
    pyinfra inventories/dual_a100.py deploys/verify.py               # driver, CUDA, GPUs, containers

The host gets the NVIDIA driver, the CUDA toolkit, Docker and the NVIDIA container toolkit, then
runs the engine in a container. Every setting a user would change is in group_data/dual_a100.py.
"""

dual_a100 = [
    ("a100-1", {"ssh_hostname": "10.0.0.21"}),
]
