"""The host platform alone: base, NVIDIA driver, CUDA, Docker, NVIDIA container toolkit.

    pyinfra inventories/<yours>.py deploys/platform.py --dry --diff
    pyinfra inventories/<yours>.py deploys/platform.py -y
    pyinfra inventories/<yours>.py deploys/verify.py            # then check what it built

For provisioning GPU hosts before a model is ready; deploys/site.py runs the same roles first.
"""

from roles.platform import host_platform
from roles.settings import check_settings

check_settings()
host_platform()
