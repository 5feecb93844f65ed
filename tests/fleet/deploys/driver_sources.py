"""The NVIDIA driver role's package sources alone, on a host without a GPU (where the role itself skips):
what it would add to apt, for the real apt of a test host to update from (tests/fleet/test_gpu_platform.py)."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import KernelVersion

from roles.defaults import DEFAULTS
from roles.hostos import host_os
from roles.nvidia_driver import driver_packages, driver_sources


@deploy("NVIDIA driver sources", data_defaults=DEFAULTS)
def nvidia_driver_sources():
    os = host_os()
    settings = {key: host.data.get(key) for key in DEFAULTS}
    driver_sources(driver_packages(os, host.get_fact(KernelVersion), settings), os, str(settings["nvidia_driver_branch"]))


nvidia_driver_sources()
