"""An air-gapped hospital intranet: two GPU nodes serve DeepSeek, one gateway host faces the wards.

The hosts never reach the internet. Everything they install comes from one signed bundle, built
outside and carried in (docs/air-gapped.md):

    # outside, on a connected machine with this checkout, the model and its keys:
    deepfleet bundle build inventories/hospital.py --out /media/transfer/deepfleet-2026-11
    # inside, on the control machine (the bundle copied to bundle_dir, the signer's key trusted):
    deepfleet bundle verify /srv/deepfleet/bundle --trusted-key .deepfleet/bundle-keys/bundle-signing.asc
    pyinfra inventories/hospital.py deploys/site.py --dry --diff
    pyinfra inventories/hospital.py deploys/site.py -y

Settings: group_data/hospital.py (every host: the bundle, the OS, the model, audit),
group_data/hospital_gpu.py (the GPU nodes), group_data/hospital_gateway.py (the gateway).
"""

hospital_gpu = [
    ("gpu-1", {"ssh_hostname": "10.20.0.11"}),
    ("gpu-2", {"ssh_hostname": "10.20.0.12"}),
]
hospital_gateway = [
    ("gateway-1", {"ssh_hostname": "10.20.0.10"}),
]
hospital = [name for name, _ in hospital_gpu + hospital_gateway]
# The topology (docs/rollout.md): the nodes serve the model, the gateway routes to both over mutual TLS.
gpu_nodes = [name for name, _ in hospital_gpu]
gateways = [name for name, _ in hospital_gateway]
