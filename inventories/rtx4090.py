"""One Ubuntu 24.04 workstation with a GeForce RTX 4090 (24 GB): DeepSeek LLM 7B chat, 8-bit.

    pyinfra inventories/rtx4090.py deploys/site.py --dry --diff
    pyinfra inventories/rtx4090.py deploys/site.py -y
    pyinfra inventories/rtx4090.py deploys/verify.py

The runtime runs from its venv under systemd (the transformers engine, int8 weights); Docker
and the container toolkit are still installed for CUDA containers and the smoke test. Every
setting a user would change is in group_data/rtx4090.py.
"""

rtx4090 = [
    ("rtx4090-1", {"ssh_hostname": "10.0.0.31"}),
]
