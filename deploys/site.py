"""The site deploy: a fresh host to a serving, secured endpoint.

    pyinfra inventories/<yours>.py deploys/site.py --dry --diff   # see every change first
    pyinfra inventories/<yours>.py deploys/site.py -y             # apply

First each host's data is checked: a key with a role's prefix that is no setting (a typo) stops
the deploy, naming the closest setting (roles/settings.py). Then, in order: the site's own CAs
(roles/trust.py), its proxy (roles/proxy.py) and NTP servers (roles/timesync.py), before any
repository is used; the host platform
(base, then NVIDIA driver, CUDA, Docker, NVIDIA container toolkit: roles/platform.py; the GPU
roles skip themselves, saying why, where they do not apply), journald's limits (roles/logs.py), the model, the runtime, the
gateway, the audit records forwarded to the SIEM (roles/siem.py; opt in), monitoring
(Prometheus, node exporters; opt in). Every setting the roles read is in roles/defaults.py.
"""

from roles.firewall import firewall
from roles.logs import journald_limits
from roles.gateway import gateway
from roles.model import model
from roles.monitoring import monitoring
from roles.platform import host_platform
from roles.proxy import site_proxy
from roles.runtime import runtime
from roles.settings import check_settings
from roles.siem import siem_forwarding
from roles.timesync import timesync
from roles.trust import site_trust

check_settings()
site_trust()  # the site's CAs first: its mirrors, proxy and registry present certificates they sign
site_proxy()
timesync()
host_platform()
journald_limits()
firewall()  # closed before anything serves (off unless firewall_enabled)
model()
runtime()
gateway()
siem_forwarding()  # off unless siem_syslog_target
monitoring()  # off unless monitoring_enabled
