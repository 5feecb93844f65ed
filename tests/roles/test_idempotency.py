"""A second run on every fixture OS changes nothing: the GPU stack planned again on the facts the
first run leaves (tests/roles/converge.py), every conditional step decided as the run would."""

from __future__ import annotations

import pytest

from roles.cuda import cuda
from roles.docker import docker
from roles.nvidia_container_toolkit import nvidia_container_toolkit
from roles.nvidia_driver import nvidia_driver

from .converge import converged
from .factplan import load_case, plan

ROLES = (nvidia_driver, cuda, docker, nvidia_container_toolkit)
CASES = {
    "ubuntu2204-2xa100": {},
    "ubuntu2404-rtx4090": {"nvidia_driver_source": "distro"},
    "rocky9-8xh100": {},
    "ubuntu2604-2xh100": {"nvidia_driver_source": "distro", "nvidia_driver_branch": "595", "cuda_source": "distro"},
    "rocky10-8xh100": {"nvidia_driver_branch": "580", "cuda_version": "13.0"},
    "debian12-2xa100-stock": {},
    "debian12-2xa100-stock-distro": {"nvidia_driver_source": "distro", "nvidia_driver_branch": "535"},
    "debian13-2xa100-stock": {},
}


@pytest.mark.parametrize("case", CASES)
def test_the_second_run_of_the_gpu_stack_changes_nothing(case):
    data = CASES[case]
    facts = load_case(case.removesuffix("-distro"))
    for role in ROLES:
        first = plan(facts, role, data=data)
        facts = converged(facts, first, branch=str(data.get("nvidia_driver_branch", "570")))
    again = {role.__name__: [op.name for op in plan(facts, role, data=data, changed=[]) if op.change != "no"]
             for role in ROLES}
    assert again == {role.__name__: [] for role in ROLES}
