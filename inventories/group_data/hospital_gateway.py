"""Settings of the gateway host of inventories/hospital.py (group `hospital_gateway`). Defaults: roles/defaults.py."""

gateway_port = 443
# The gateway routes to both GPU nodes' runtimes over mutual TLS: inventories/hospital.py puts it in
# the `gateways` group and the nodes in `gpu_nodes` (roles/topology.py derives the upstreams).
