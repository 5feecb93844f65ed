"""deploys/verify.py's checks, from recorded facts of provisioned (and broken) GPU hosts."""

from __future__ import annotations

import pytest

from roles.defaults import DEFAULTS
from roles.gpu_facts import CudaProbe, GpuContainerTest, NvidiaFabric, NvidiaPciDevices, NvidiaPersistence, NvidiaSmi
from roles.verify import gpu_checks, report, verify

from .factplan import find, load_case, plan, with_facts

PCI = NvidiaPciDevices().process(["0000:07:00.0 0x030200 0x20b2", "0000:0f:00.0 0x030200 0x20b2"])
SMI_LINES = [f"{i}, NVIDIA A100-SXM4-80GB, 81920, 570.133.20, 8.0, 00000000:0{i}:00.0" for i in (7, 8)]
CONTAINER_LINES = ["GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-a)", "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-b)",
                   "exit_code=0"]
TOOLKIT = {"cuda": {"name": "CUDA SDK", "version": "12.8.1"}}
DOCKER_INFO = {"Runtimes": {"io.containerd.runc.v2": {}, "nvidia": {"path": "nvidia-container-runtime"}, "runc": {}}}


CUDA_OK = ["devices=2", "ok=0", "ok=1"]
PERSISTENCE = ["7, Enabled", "8, Enabled"]  # the GPU indexes of SMI_LINES


def _checks(settings=None, smi=SMI_LINES + ["CUDA Version: 12.8"], container=CONTAINER_LINES, toolkit=TOOLKIT,
            docker_info=DOCKER_INFO, cuda=CUDA_OK, persistence=PERSISTENCE, switches=(), fabric=()):
    return gpu_checks({**DEFAULTS, **(settings or {})}, PCI, NvidiaSmi().process(smi) if smi is not None else None,
                      toolkit, docker_info, GpuContainerTest().process(container) if container is not None else None,
                      cuda=CudaProbe().process(cuda), persistence=NvidiaPersistence().process(persistence),
                      switches=list(switches), fabric=NvidiaFabric().process(list(fabric)))


def _failed(checks):
    return [check.name for check in checks if not check.ok]


def test_a_host_that_matches_its_settings_passes_every_check():
    checks = _checks({"verify_gpu_count": 2})
    assert _failed(checks) == [] and len(checks) == 10
    assert "planner: 2xA100-80GB" in checks[0].detail


@pytest.mark.parametrize(("settings", "smi", "failed"), [
    ({"nvidia_driver_branch": "550"}, None, ["driver branch"]),
    ({"verify_gpu_count": 4}, None, ["GPUs the driver sees", "CUDA works on every GPU (a context and an allocation each)",
                                     "a CUDA container sees the GPUs"]),
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
    checks = _checks(docker_info={"Runtimes": {"runc": {}}},
                     container=['docker: Error response from daemon: could not select device driver "" with '
                                'capabilities: [[gpu]].', "exit_code=125"])
    assert _failed(checks) == ["Docker has the nvidia runtime", "a CUDA container sees the GPUs"]
    assert "could not select device driver" in checks[-1].detail


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
    assert "802" in checks[-4].detail and "nvidia-fabricmanager" in checks[-4].detail
    done = ["        State                             : Completed", "        Status                            : Success"] * 2
    assert _failed(_checks(switches=["0000:c1:00.0"] * 6, fabric=done)) == []


def test_persistence_mode_off_fails_its_check():
    assert _failed(_checks(persistence=["7, Disabled", "8, Enabled"])) == ["persistence mode"]
