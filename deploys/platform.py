"""The host platform alone: base, NVIDIA driver, CUDA, Docker, NVIDIA container toolkit.

    pyinfra inventories/<yours>.py deploys/platform.py --dry --diff
    pyinfra inventories/<yours>.py deploys/platform.py -y
    pyinfra inventories/<yours>.py deploys/verify.py            # then check what it built

For provisioning GPU hosts before a model is ready; deploys/site.py runs the same roles first.
"""

from roles.platform import host_platform
from roles.proxy import site_proxy
from roles.settings import check_settings
from roles.timesync import timesync
from roles.trust import site_trust

check_settings()
site_trust()  # before any repository is used, as in deploys/site.py
site_proxy()
timesync()
host_platform()
