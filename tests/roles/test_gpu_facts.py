"""GPU facts: the sysfs scan run on a fake PCI tree, parsers fed what nvidia-smi and docker print."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from roles.gpu_facts import (CUDA_CONTAINER_TIMEOUT_S, CudaProbe, GpuContainerTest, GpuCudaContainers, NvidiaModuleState, NvidiaPciDevices, NvidiaSmi, gpu_spec,
                             model_name, pci_scan_command)

A100_SMI = ["0, NVIDIA A100-SXM4-80GB, 81920, 570.133.20, 8.0, 00000000:07:00.0",
            "1, NVIDIA A100-SXM4-80GB, 81920, 570.133.20, 8.0, 00000000:0F:00.0",
            "CUDA Version: 12.8"]
NO_DRIVER = ["NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that "
             "the latest NVIDIA driver is installed and running."]


def _pci_device(root, slot, vendor, pci_class, device):
    path = root / slot
    path.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("class", pci_class), ("device", device)):
        (path / name).write_text(value + "\n")


def test_pci_scan_lists_nvidia_gpus_only_from_sysfs(tmp_path):
    _pci_device(tmp_path, "0000:00:02.0", "0x8086", "0x030000", "0x46a6")  # an Intel iGPU
    _pci_device(tmp_path, "0000:01:00.0", "0x10de", "0x030000", "0x2684")  # RTX 4090
    _pci_device(tmp_path, "0000:01:00.1", "0x10de", "0x040300", "0x22ba")  # its HDMI audio
    _pci_device(tmp_path, "0000:c1:00.0", "0x10de", "0x068000", "0x1af1")  # an NVSwitch
    _pci_device(tmp_path, "0000:07:00.0", "0x10de", "0x030200", "0x20b2")  # A100 SXM4 80GB
    output = subprocess.run(["sh", "-c", pci_scan_command(str(tmp_path))], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert NvidiaPciDevices().process(output) == [
        {"slot": "0000:01:00.0", "device_id": "0x2684", "model": "RTX4090", "memory_gb": 24},
        {"slot": "0000:07:00.0", "device_id": "0x20b2", "model": "A100", "memory_gb": 80},
    ]


def test_pci_scan_of_a_machine_without_nvidia_is_empty(tmp_path):
    _pci_device(tmp_path, "0000:00:02.0", "0x8086", "0x030000", "0x46a6")
    output = subprocess.run(["sh", "-c", pci_scan_command(str(tmp_path / "missing"))], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert output == [] and NvidiaPciDevices.default() == []


def test_unknown_nvidia_device_keeps_its_id():
    assert NvidiaPciDevices().process(["0000:3b:00.0 0x030200 0x9999"]) == [
        {"slot": "0000:3b:00.0", "device_id": "0x9999", "model": "NVIDIA-0x9999", "memory_gb": None}]


def test_nvidia_smi_per_gpu_and_cuda_version():
    smi = NvidiaSmi().process(A100_SMI)
    assert smi["driver_version"] == "570.133.20" and smi["cuda_version"] == "12.8" and smi["error"] is None
    assert smi["gpus"][1] == {"index": 1, "name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920,
                              "driver_version": "570.133.20", "compute_capability": "8.0",
                              "pci_bus_id": "00000000:0F:00.0"}


def test_nvidia_smi_without_a_loaded_driver_says_why():
    smi = NvidiaSmi().process(NO_DRIVER)
    assert smi["gpus"] == [] and smi["driver_version"] is None
    assert smi["error"].startswith("NVIDIA-SMI has failed")


def test_module_state_loaded_and_installed_versions():
    unknown = {"running": None, "default": None, "driver": None, "built": {}}
    assert NvidiaModuleState().process(["loaded=570.133.20", "installed=570.133.20"]) == {
        "loaded": "570.133.20", "installed": "570.133.20", **unknown}
    assert NvidiaModuleState().process(["loaded=", "installed=570.133.20"]) == {
        "loaded": None, "installed": "570.133.20", **unknown}


def test_module_state_lists_every_kernel_the_module_was_built_for(tmp_path):
    output = ["loaded=", "installed=", "running=5.14.0-427.13.1.el9_4.x86_64",
              "built=5.14.0-503.14.1.el9_5.x86_64 570.133.20", "default=5.14.0-503.14.1.el9_5.x86_64",
              "driver=570.133.20"]
    state = NvidiaModuleState().process(output)
    assert state["built"] == {"5.14.0-503.14.1.el9_5.x86_64": "570.133.20"}
    assert (state["default"], state["driver"]) == ("5.14.0-503.14.1.el9_5.x86_64", "570.133.20")
    real = subprocess.run(["sh", "-c", NvidiaModuleState().command()], capture_output=True, text=True, check=True)
    assert NvidiaModuleState().process(real.stdout.splitlines())["running"] == os.uname().release


def test_container_test_counts_gpus_and_keeps_docker_errors():
    ok = GpuContainerTest().process(["GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)",
                                     "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)", "exit_code=0"])
    assert ok["exit_code"] == 0 and len(ok["gpus"]) == 2
    failed = GpuContainerTest().process(['docker: Error response from daemon: could not select device driver "" '
                                         'with capabilities: [[gpu]].', "exit_code=125"])
    assert failed["exit_code"] == 125 and failed["gpus"] == [] and "could not select device driver" in failed["output"]


# NVIDIA's CUDA vectorAdd sample (cuda-samples Samples/0_Introduction/vectorAdd), as the GPU Operator's
# "Running Sample GPU Applications" shows its log; NVIDIA's container toolkit e2e tests expect "Test PASSED".
VECTORADD_OK = ["[Vector addition of 50000 elements]", "Copy input data from the host memory to the CUDA device",
                "CUDA kernel launch with 196 blocks of 256 threads",
                "Copy output data from the CUDA device to the host memory", "Test PASSED", "Done"]
# cudaMalloc on an NVSwitch board without Fabric Manager (cudaErrorSystemNotReady, 802), as GPU Operator
# users report the cuda-validator's log: stderr first, since stdout is a pipe and buffered.
VECTORADD_802 = ["Failed to allocate device vector A (error code system not yet initialized)!",
                 "[Vector addition of 50000 elements]"]


def test_cuda_containers_run_one_container_per_gpu_index():
    command = GpuCudaContainers().command("nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0", "0,1")
    assert command.count("docker run --rm --name deepfleet-verify-cuda-") == 2
    assert "docker run --rm --name deepfleet-verify-cuda-0 --gpus device=0 " \
        "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0 2>&1" in command and "--gpus device=1 " in command
    assert GpuCudaContainers().command("img", "") == "true"  # no GPU answers: nothing to run


def test_cuda_containers_are_bounded_in_time_and_leave_no_container_behind():
    # a wedged GPU must not hang verify: each run has a deadline, a name, and is removed after it
    command = GpuCudaContainers().command("img", "3")
    assert f"timeout {CUDA_CONTAINER_TIMEOUT_S} docker run --rm --name deepfleet-verify-cuda-3 --gpus device=3 img" \
        in command
    assert command.index("docker rm -f deepfleet-verify-cuda-3") < command.index("docker run")  # a leftover goes first
    assert command.rstrip().endswith("docker rm -f deepfleet-verify-cuda-3 >/dev/null 2>&1 || true")
    runs = GpuCudaContainers().process(["gpu=3", "exit_code=124"])
    assert runs[3] == {"exit_code": 124, "passed": False, "output": ""}


def test_cuda_containers_parse_each_gpus_vectoradd_and_exit_code():
    output = (["gpu=0", *VECTORADD_OK, "exit_code=0", "gpu=1", *VECTORADD_802, "exit_code=1", "gpu=2",
               'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].',
               "exit_code=125"])
    runs = GpuCudaContainers().process(output)
    assert sorted(runs) == [0, 1, 2]
    assert runs[0] == {"exit_code": 0, "passed": True, "output": "\n".join(VECTORADD_OK)}
    assert (runs[1]["exit_code"], runs[1]["passed"]) == (1, False) and "system not yet initialized" in runs[1]["output"]
    assert (runs[2]["exit_code"], runs[2]["passed"]) == (125, False)
    # "Test PASSED" printed but the container failed afterwards (cudaFree): not passed
    assert GpuCudaContainers().process(["gpu=0", "Test PASSED", "Failed to free device vector A", "exit_code=1"])[0][
        "passed"] is False


@pytest.mark.parametrize(("name", "short"), [
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA GeForce RTX 4090", "RTX4090"),
    ("Tesla T4", "T4"), ("NVIDIA L40S", "L40S"),
])
def test_model_names_in_planner_form(name, short):
    assert model_name(name) == short


def test_gpu_spec_from_nvidia_smi_wins_over_pci_ids():
    pci = [{"slot": "a", "device_id": "0x20b2", "model": "A100", "memory_gb": 80}] * 2
    assert gpu_spec(NvidiaSmi().process(A100_SMI), pci) == "2xA100-80GB"
    assert gpu_spec(None, pci) == "2xA100-80GB"
    h100 = NvidiaSmi().process([f"{i}, NVIDIA H100 80GB HBM3, 81559, 570.133.20, 9.0, 0:{i}" for i in range(8)])
    assert gpu_spec(h100, []) == "8xH100-80GB"
    mixed = [{"slot": "a", "device_id": "0x2684", "model": "RTX4090", "memory_gb": 24},
             {"slot": "b", "device_id": "0x9999", "model": "NVIDIA-0x9999", "memory_gb": None}]
    assert gpu_spec(None, mixed) == "1xRTX4090-24GB+1xNVIDIA-0x9999"
    assert gpu_spec(None, []) is None


STUB_LIBCUDA = r"""
/* A stand-in libcuda.so.1 exporting the driver API calls CudaProbe makes; CUINIT_RESULT picks cuInit's answer. */
#include <stdlib.h>
static const char *names[] = {"CUDA_SUCCESS", "CUDA_ERROR_SYSTEM_NOT_READY"};
int cuInit(unsigned flags) { const char *r = getenv("CUINIT_RESULT"); return r ? atoi(r) : 0; }
int cuGetErrorName(int code, const char **out) { *out = names[code == 802]; return 0; }
int cuDeviceGetCount(int *count) { *count = 2; return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return 0; }
int cuDevicePrimaryCtxRetain(void **ctx, int device) { *ctx = (void *)1; return 0; }
int cuDevicePrimaryCtxRelease(int device) { return 0; }
int cuCtxSetCurrent(void *ctx) { return 0; }
int cuMemAlloc_v2(unsigned long long *ptr, size_t size) { *ptr = 4096; return 0; }
int cuMemFree_v2(unsigned long long ptr) { return 0; }
"""


@pytest.mark.parametrize(("cuinit", "expected"), [
    ("0", {"devices": 2, "ok": [0, 1], "error": None}),
    ("802", {"devices": 0, "ok": [], "error": "CUDA_ERROR_SYSTEM_NOT_READY (802)"}),  # NVSwitch, no Fabric Manager
])
def test_the_cuda_probe_runs_its_driver_api_calls_against_a_stand_in_libcuda(tmp_path, cuinit, expected):
    if not shutil.which("cc"):
        pytest.skip("no C compiler for the stand-in libcuda")
    (tmp_path / "stub.c").write_text(STUB_LIBCUDA)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "libcuda.so.1"), str(tmp_path / "stub.c")],
                   check=True)
    output = subprocess.run(["sh", "-c", CudaProbe().command()], capture_output=True, text=True, check=True,
                            env={**os.environ, "LD_LIBRARY_PATH": str(tmp_path), "CUINIT_RESULT": cuinit}).stdout
    assert CudaProbe().process(output.splitlines()) == expected


def test_the_cuda_probe_without_a_driver_says_so():
    output = subprocess.run(["sh", "-c", CudaProbe().command()], capture_output=True, text=True, check=True,
                            env={**os.environ, "LD_LIBRARY_PATH": "/nonexistent"}).stdout
    if CudaProbe().process(output.splitlines())["devices"]:
        pytest.skip("this machine has a working libcuda")
    assert CudaProbe().process(output.splitlines())["error"].startswith("libcuda.so.1 cannot be loaded")
