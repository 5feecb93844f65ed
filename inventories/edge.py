"""The edge profile: a Raspberry Pi 5 class box on Debian 12 arm64, no GPU: llama.cpp, GGUF q4.

    pyinfra inventories/edge.py deploys/site.py --dry --diff
    pyinfra inventories/edge.py deploys/site.py -y

No NVIDIA roles run (the host has no NVIDIA device; they say so and skip) and no Docker. The
architecture comes from the host's facts: its wheels are built for aarch64. Every setting a user
would change is in group_data/edge.py.
"""

edge = [
    ("edge-1", {"ssh_hostname": "192.168.50.10"}),
]
