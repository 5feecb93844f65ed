"""Settings of the gateway host of inventories/hospital.py (group `hospital_gateway`). Defaults: roles/defaults.py."""

gateway_port = 443
# The gateway routes to the GPU nodes' runtimes over mutual TLS (`gateway_upstreams`). The runtime's
# side of that mutual TLS is being wired by the fleet-topology work; until then every host runs the
# whole site deploy (its own runtime behind its own gateway). Then:
# gateway_upstreams = [{"name": "gpu-1", "url": "https://10.20.0.11:8000"},
#                      {"name": "gpu-2", "url": "https://10.20.0.12:8000"}]
