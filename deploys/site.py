"""The site deploy: a fresh host to a serving, secured endpoint.

    pyinfra inventories/<yours>.py deploys/site.py --dry --diff   # see every change first
    pyinfra inventories/<yours>.py deploys/site.py -y             # apply

First each host's data is checked: a key with a role's prefix that is no setting (a typo) stops
the deploy, naming the closest setting (roles/settings.py). Then, in order: the host platform
(base, then NVIDIA driver, CUDA, Docker, NVIDIA container toolkit: roles/platform.py; the GPU
roles skip themselves, saying why, where they do not apply), the model, the runtime, the
gateway, monitoring (Prometheus, node exporters; opt in). Every setting the roles read is in roles/defaults.py.
"""

from roles.firewall import firewall
from roles.gateway import gateway
from roles.model import model
from roles.monitoring import monitoring
from roles.platform import host_platform
from roles.runtime import runtime
from roles.settings import check_settings

check_settings()
host_platform()
firewall()  # closed before anything serves (off unless firewall_enabled)
model()
runtime()
gateway()
monitoring()  # off unless monitoring_enabled
