"""The runtime role's choices before anything reaches a host: which pins its wheels get."""

from __future__ import annotations

import pytest

from roles.common import RoleError
from roles.defaults import DEFAULTS
from roles.runtime import runtime, runtime_accelerator

from .factplan import load_case, plan

CUDA_DRIVER = {"nvidia_driver_branch": "580"}


@pytest.mark.parametrize(("settings", "accelerator"), [
    ({}, "cpu"),
    ({"runtime_engine": "llamacpp"}, "cpu"),
    ({"runtime_device": "cuda", **CUDA_DRIVER}, "cuda"),
    ({"runtime_device": "cuda:1", **CUDA_DRIVER}, "cuda"),
    ({"runtime_engine": "vllm", **CUDA_DRIVER}, "cuda"),
])
def test_gpu_runtimes_get_cuda_pins_and_everything_else_cpu_pins(settings, accelerator):
    assert runtime_accelerator({**DEFAULTS, **settings}) == accelerator


def test_cuda_pins_on_a_driver_too_old_for_them_are_refused_with_the_fix(wheelhouse, control_data):
    with pytest.raises(RoleError, match='need NVIDIA driver branch 580 or newer, and nvidia_driver_branch is 570: '
                                        'set nvidia_driver_branch: "580"'):
        plan(load_case("ubuntu2404-rtx4090"), runtime, data={**control_data, "runtime_device": "cuda",
                                                             "nvidia_driver_branch": "570"})
    assert wheelhouse.requests == []  # refused before any wheel is fetched
