"""deploys/verify.py's checks, from recorded facts of provisioned (and broken) GPU hosts."""

from __future__ import annotations

import pytest

from roles.defaults import DEFAULTS
from roles.gpu_facts import (CUDA_CONTAINER_TIMEOUT_S, CudaProbe, GpuContainerTest, GpuCudaContainers, NvidiaFabric, NvidiaPciDevices, NvidiaPersistence,
                             NvidiaSmi)
from roles.verify import gpu_checks, report, verify

from .factplan import find, load_case, plan, with_facts
from .test_gpu_facts import VECTORADD_802, VECTORADD_OK

PCI = NvidiaPciDevices().process(["0000:07:00.0 0x030200 0x20b2", "0000:0f:00.0 0x030200 0x20b2"])
SMI_LINES = [f"{i}, NVIDIA A100-SXM4-80GB, 81920, 570.133.20, 8.0, 00000000:0{i}:00.0" for i in (7, 8)]
CONTAINER_LINES = ["GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-a)", "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-b)",
                   "exit_code=0"]
TOOLKIT = {"cuda": {"name": "CUDA SDK", "version": "12.8.1"}}
DOCKER_INFO = {"Runtimes": {"io.containerd.runc.v2": {}, "nvidia": {"path": "nvidia-container-runtime"}, "runc": {}}}


CUDA_OK = ["devices=2", "ok=0", "ok=1"]
PERSISTENCE = ["7, Enabled", "8, Enabled"]  # the GPU indexes of SMI_LINES
CONTAINERS_OK = ["gpu=7", *VECTORADD_OK, "exit_code=0", "gpu=8", *VECTORADD_OK, "exit_code=0"]
CUDA_IN_CONTAINERS = "CUDA in a container on every GPU (NVIDIA's vectorAdd sample)"


def _checks(settings=None, smi=SMI_LINES + ["CUDA Version: 12.8"], container=CONTAINER_LINES, toolkit=TOOLKIT,
            docker_info=DOCKER_INFO, cuda=CUDA_OK, persistence=PERSISTENCE, switches=(), fabric=(),
            containers=CONTAINERS_OK):
    return gpu_checks({**DEFAULTS, **(settings or {})}, PCI, NvidiaSmi().process(smi) if smi is not None else None,
                      toolkit, docker_info, GpuContainerTest().process(container) if container is not None else None,
                      cuda=CudaProbe().process(cuda), persistence=NvidiaPersistence().process(persistence),
                      switches=list(switches), fabric=NvidiaFabric().process(list(fabric)),
                      cuda_containers=GpuCudaContainers().process(containers) if containers is not None else None)


def _failed(checks):
    return [check.name for check in checks if not check.ok]


def test_a_host_that_matches_its_settings_passes_every_check():
    checks = _checks({"verify_gpu_count": 2})
    assert _failed(checks) == [] and len(checks) == 11
    assert checks[-1].name == CUDA_IN_CONTAINERS and checks[-1].detail.startswith("2 of 2 GPUs passed")
    assert "planner: 2xA100-80GB" in checks[0].detail


@pytest.mark.parametrize(("settings", "smi", "failed"), [
    ({"nvidia_driver_branch": "550"}, None, ["driver branch"]),
    ({"verify_gpu_count": 4}, None, ["GPUs the driver sees", "CUDA works on every GPU (a context and an allocation each)",
                                     "a CUDA container sees the GPUs", CUDA_IN_CONTAINERS]),
    ({"cuda_version": "12.9"}, None, ["CUDA toolkit", "the driver supports that CUDA"]),
    ({}, SMI_LINES[:1] + ["CUDA Version: 12.8"], ["GPUs the driver sees"]),  # one GPU fell off the bus
])
def test_each_mismatch_fails_its_check(settings, smi, failed):
    checks = _checks(settings, **({"smi": smi} if smi else {}))
    assert _failed(checks) == failed


def test_a_driver_that_does_not_answer_stops_the_checks_there():
    checks = _checks(smi=["NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."])
    assert _failed(checks) == ["the driver answers"] and "couldn't communicate" in checks[-1].detail
    assert _failed(_checks(smi=None)) == ["the driver answers"]


def test_docker_without_the_nvidia_runtime_and_a_failing_container_are_reported():
    no_driver = 'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].'
    checks = _checks(docker_info={"Runtimes": {"runc": {}}}, container=[no_driver, "exit_code=125"],
                     containers=["gpu=7", no_driver, "exit_code=125", "gpu=8", no_driver, "exit_code=125"])
    assert _failed(checks) == ["Docker has the nvidia runtime", "a CUDA container sees the GPUs", CUDA_IN_CONTAINERS]
    assert "could not select device driver" in checks[-2].detail
    assert "nvidia-ctk runtime configure --runtime=docker" in checks[-1].detail


def test_report_lines_say_ok_or_fail_per_check():
    text = report("a100-1", _checks({"nvidia_driver_branch": "550"}))
    assert text.splitlines()[0] == "a100-1: GPU verification"
    assert "  FAIL  driver branch: 570.133.20, pinned branch 550" in text.splitlines()


def test_verify_deploy_passes_a_host_without_gpu_and_fails_a_broken_one():
    passing = plan(load_case("debian12-nogpu"), verify)
    assert [(op.change, op.notes) for op in passing] == [
        ("no", ["h1: GPU verification\n  ok    NVIDIA devices on the PCI bus: none: nothing GPU to verify"]),
        ("no", ["h1: clock\n  ok    clock offset: unknown: not synchronised; systemd-timesyncd: Failed to query server: "
                "The name org.freedesktop.timesync1 was not provided by any .service files"])]
    broken = with_facts(load_case("ubuntu2204-2xa100"), **{
        "roles.gpu_facts.NvidiaSmi": {"$output": SMI_LINES[:1] + ["CUDA Version: 12.8"]},
        "roles.facts.JsonFile": {"path=/usr/local/cuda-12.8/version.json": TOOLKIT},
        "docker.DockerSystemInfo": DOCKER_INFO,
        "roles.gpu_facts.GpuContainerTest": {"*": {"$output": CONTAINER_LINES[:1] + ["exit_code=0"]}},
        "roles.gpu_facts.GpuCudaContainers": {"*": {"$output": CONTAINERS_OK[:len(CONTAINERS_OK) // 2]}},
    })
    failing = find(plan(broken, verify, data={"verify_gpu_count": 2}), "GPU verification")
    assert failing.change == "yes"
    assert failing.shell()[0].startswith("echo 'h1: GPU verification") and failing.shell()[0].endswith(">&2 && exit 1")
    assert "FAIL  GPUs the driver sees: 1, expected 2" in failing.shell()[0]


def test_an_nvswitch_board_without_fabric_manager_fails_on_cuda_and_fabric_though_nvidia_smi_answers():
    fabric = ["        State                             : In Progress", "        Status                            : N/A"] * 2
    checks = _checks(cuda=["error=CUDA_ERROR_SYSTEM_NOT_READY (802)"], switches=["0000:c1:00.0"] * 6, fabric=fabric)
    assert _failed(checks) == ["NVSwitch fabric (Fabric Manager)",
                               "CUDA works on every GPU (a context and an allocation each)"]
    (cuda,) = [check for check in checks if check.name.startswith("CUDA works on every GPU")]
    assert "802" in cuda.detail and "nvidia-fabricmanager" in cuda.detail
    done = ["        State                             : Completed", "        Status                            : Success"] * 2
    assert _failed(_checks(switches=["0000:c1:00.0"] * 6, fabric=done)) == []


def test_persistence_mode_off_fails_its_check():
    assert _failed(_checks(persistence=["7, Disabled", "8, Enabled"])) == ["persistence mode"]


def _container_check(checks):
    (check,) = [check for check in checks if check.name == CUDA_IN_CONTAINERS]
    return check


def test_a_gpu_whose_container_gets_no_working_cuda_fails_verify_naming_the_gpu_and_fabric_manager():
    # nvidia-smi -L in a container and the host's own probe pass; the container on GPU 8 cannot allocate
    containers = ["gpu=7", *VECTORADD_OK, "exit_code=0", "gpu=8", *VECTORADD_802, "exit_code=1"]
    checks = _checks(containers=containers)
    assert _failed(checks) == [CUDA_IN_CONTAINERS]
    detail = _container_check(checks).detail
    assert detail.startswith("1 of 2 GPUs passed")
    assert "GPU 8 (00000000:08:00.0): exit 1: Failed to allocate device vector A (error code system not yet " \
           "initialized)!" in detail
    assert "systemctl status nvidia-fabricmanager" in detail
    assert "GPU 7" not in detail


def test_seven_of_eight_gpus_passing_fails_and_a_gpu_never_run_is_named():
    smi = [f"{i}, NVIDIA H100 80GB HBM3, 81559, 570.133.20, 9.0, 00000000:{0x18 + i:02X}:00.0" for i in range(8)]
    containers = [line for i in range(7) for line in (f"gpu={i}", *VECTORADD_OK, "exit_code=0")]
    checks = gpu_checks({**DEFAULTS, "verify_gpu_count": 8}, PCI, NvidiaSmi().process(smi + ["CUDA Version: 12.8"]),
                        TOOLKIT, DOCKER_INFO, None, cuda=CudaProbe().process(["devices=8", *[f"ok={i}" for i in range(8)]]),
                        persistence={i: "Enabled" for i in range(8)},
                        cuda_containers=GpuCudaContainers().process(containers))
    check = _container_check(checks)
    assert not check.ok and check.detail.startswith("7 of 8 GPUs passed")
    assert "GPU 7 (00000000:1F:00.0): no container ran" in check.detail


def test_an_image_missing_on_an_air_gapped_host_names_the_bundle():
    missing = ["Unable to find image 'nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0' locally",
               "docker: Error response from daemon: Get \"https://nvcr.io/v2/\": dial tcp: lookup nvcr.io: no such host.",
               "exit_code=125"]
    detail = _container_check(_checks(containers=["gpu=7", *missing, "gpu=8", *missing])).detail
    assert "GPU 7" in detail and "GPU 8" in detail and "bundle" in detail and "verify_cuda_container_image" in detail


def test_a_container_that_outlives_its_deadline_names_a_wedged_gpu():
    detail = _container_check(_checks(containers=["gpu=7", *VECTORADD_OK, "exit_code=0", "gpu=8", "exit_code=124"])).detail
    assert "GPU 8 (00000000:08:00.0): exit 124" in detail
    assert f"no answer within {CUDA_CONTAINER_TIMEOUT_S} s" in detail and "nvidia-smi -q -d ECC,PERFORMANCE" in detail


def test_verify_runs_the_sample_on_each_gpu_the_driver_sees_with_the_setting_image():
    facts = with_facts(load_case("ubuntu2204-2xa100"), **{
        "roles.gpu_facts.NvidiaSmi": {"$output": SMI_LINES + ["CUDA Version: 12.8"]},
        "roles.facts.JsonFile": {"path=/usr/local/cuda-12.8/version.json": TOOLKIT},
        "docker.DockerSystemInfo": DOCKER_INFO,
        "roles.gpu_facts.GpuContainerTest": {"*": {"$output": CONTAINER_LINES}},
        "roles.gpu_facts.CudaProbe": {"$output": ["devices=2", "ok=0", "ok=1"]},
        "roles.gpu_facts.NvidiaPersistence": {"$output": PERSISTENCE},
        "roles.gpu_facts.GpuCudaContainers": {
            "gpus=7,8,image=registry.hospital.internal/cuda-sample:vectoradd-cuda12.5.0": {"$output": CONTAINERS_OK}},
    })
    ops = plan(facts, verify, data={"verify_gpu_count": 2,
                                    "verify_cuda_container_image": "registry.hospital.internal/cuda-sample:vectoradd-cuda12.5.0"})
    check = find(ops, "GPU verification")
    assert check.change == "no", check.shell()
    assert f"ok    {CUDA_IN_CONTAINERS}: 2 of 2 GPUs passed" in check.notes[0]
    assert DEFAULTS["verify_cuda_container_image"] == "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0"
