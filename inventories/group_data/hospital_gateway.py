"""Settings of the gateway host of inventories/hospital.py (group `hospital_gateway`). Defaults: roles/defaults.py."""

gateway_port = 443
# The gateway routes to the GPU nodes' runtimes over mutual TLS: `gateway_upstreams` is being added by
# issue 6 (not on main yet). Until it lands every host runs the whole site deploy (its own runtime
# behind its own gateway). Uncomment once it is there:
# gateway_upstreams = [{"name": "gpu-1", "url": "https://10.20.0.11:8000"},
#                      {"name": "gpu-2", "url": "https://10.20.0.12:8000"}]
