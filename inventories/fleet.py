"""An on-prem fleet: two gateways in front of four GPU nodes, each node serving DeepSeek LLM 67B
(int4, vLLM, tensor parallel over its two A100s) on its own. Clients may use either gateway; each
gateway routes to all four nodes over mutual TLS.

    deepfleet plan inventories/fleet.py                   # every change, with diffs (exit 2: pending)
    deepfleet up inventories/fleet.py                     # converge (first deploy)
    deepfleet rollout inventories/fleet.py --batch 25%    # a new release, one node at a time, under load
    deepfleet status inventories/fleet.py                 # release, health and GPU use per host
    deepfleet rollback inventories/fleet.py --limit gpu3  # back to the previous release

Groups: `gateways` face clients, `gpu_nodes` hold the model and serve it (a host may be in both).
Every setting a user would change is in group_data/fleet.py; the runbook is docs/rollout.md.
"""

gateways = [
    ("gw1", {"ssh_hostname": "10.0.0.11"}),
    ("gw2", {"ssh_hostname": "10.0.0.12"}),
]

gpu_nodes = [
    ("gpu1", {"ssh_hostname": "10.0.1.21"}),
    ("gpu2", {"ssh_hostname": "10.0.1.22"}),
    ("gpu3", {"ssh_hostname": "10.0.1.23"}),
    ("gpu4", {"ssh_hostname": "10.0.1.24"}),
]
