"""A Ray group's cluster alone (tests/fleet/test_ray_cluster.py): the roles that form it, and not the
runtime service. On GPU hosts the site deploy runs these same roles, and then vLLM on the head uses
the cluster; vLLM's CPU build cannot run over Ray (docs/runtime.md), so on test hosts the cluster
is formed and checked without it: the base platform, the firewall (Ray's ports from the peers only),
the runtime venv with the `ray` extra, and each node's Ray unit (roles/ray.py).
"""

from pyinfra import host
from pyinfra.api import deploy

from roles.defaults import DEFAULTS
from roles.firewall import firewall
from roles.platform import host_platform
from roles.ray import RAY_EXTRA, ray
from roles.runtime import install_runtime, role_settings
from roles.settings import check_settings


@deploy("Ray cluster", data_defaults=DEFAULTS)
def ray_cluster():
    install, _, _ = install_runtime(role_settings(), (*host.data.runtime_wheel_extras, RAY_EXTRA))
    ray(restart_inputs=[install])


check_settings()
host_platform()
firewall()
ray_cluster()
