"""The verify role (deploys/verify.py): does a provisioned host show what its settings promise?

Read-only checks from facts, one report per host: the driver answers (nvidia-smi) with the pinned
branch, it sees the expected number of GPUs (`verify_gpu_count`, else the PCI count), CUDA really
works on each (a context and an allocation through the host's libcuda: error 802 on an NVSwitch
board without Fabric Manager fails here), the fabric is Completed where there are NVSwitches,
persistence mode is Enabled on every GPU, the CUDA
toolkit has the pinned version and the driver supports it, Docker has the nvidia runtime, a CUDA
container (`nvidia_container_toolkit_test_image`) lists the same GPUs, and a container gets working
CUDA on every GPU: NVIDIA's vectorAdd sample (`verify_cuda_container_image`) run once per GPU with
`--gpus device=N` must print "Test PASSED". A host that fails any check fails the run, with the
report as its error (a failed GPU named, with the fix); a host without an NVIDIA device passes with
that said. The only things verify starts on a host are those throwaway `docker run --rm` containers.
Every host also reports its clock's offset from its time servers (chrony or systemd-timesyncd): more
than `ntp_max_offset_ms`, or no synchronised source where `ntp_servers` is set, fails it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import QuoteString, StringCommand, deploy, operation
from pyinfra.facts.docker import DockerSystemInfo

from .cuda import cuda_home
from .defaults import DEFAULTS
from .facts import ClockOffset, JsonFile
from .gpu_facts import (CUDA_CONTAINER_TIMEOUT_S, CudaProbe, GpuContainerTest, GpuCudaContainers, NvidiaFabric, NvidiaNvSwitches,
                        NvidiaPersistence, NvidiaSmi, gpu_spec, nvidia_devices)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


CONTAINER_TIMED_OUT = (f"no answer within {CUDA_CONTAINER_TIMEOUT_S} s: the GPU may be wedged (look for Xid errors in "
                       "`dmesg` and at `nvidia-smi -q -d ECC,PERFORMANCE`; drain the host, then reset the GPU or reboot)")

# What a failed vectorAdd container says -> the fix (the first match wins).
CONTAINER_FIXES = (
    (("system not yet initialized", "802"),
     "on NVSwitch boards Fabric Manager must run (systemctl status nvidia-fabricmanager)"),
    (("could not select device driver",),
     "Docker has no GPU support: rerun the platform deploy (nvidia container toolkit, then "
     "`nvidia-ctk runtime configure --runtime=docker` and a docker restart)"),
    (("Unable to find image", "pull access denied", "manifest unknown", "no such host", "dial tcp"),
     "the image is not on the host and cannot be pulled: air-gapped hosts load it from the bundle (build the "
     "bundle with this inventory, rerun the site deploy), else let the host reach the registry or set "
     "verify_cuda_container_image to a mirror's copy"),
    (("driver version is insufficient",),
     "the driver is older than the image's CUDA: set verify_cuda_container_image to a sample of the driver's CUDA"),
)


def _container_failure(index: int, gpu: dict | None, run: dict | None, image: str) -> str:
    """One GPU whose container did not pass: its index and bus id, what it printed, the fix."""
    name = f"GPU {index}" + (f" ({gpu['pci_bus_id']})" if gpu else "")
    if run is None:
        return f"{name}: no container ran"
    said = " ".join(line for line in run["output"].splitlines() if line.strip())[-300:] or "no output"
    if run["exit_code"] == 124:  # `timeout` stopped it
        return f"{name}: exit 124: {CONTAINER_TIMED_OUT}"
    fix = next((fix for needles, fix in CONTAINER_FIXES if any(needle in run["output"] for needle in needles)),
               f"run `docker run --rm --gpus device={index} {image}` on the host for the whole error")
    return f"{name}: exit {run['exit_code']}: {said}; {fix}"


def _cuda_containers_check(settings: Mapping, gpus: list[dict], runs: dict | None, expected: int) -> Check:
    """Every GPU nvidia-smi lists passed NVIDIA's vectorAdd in its own container, and they are `expected`."""
    runs = runs or {}
    indexes = sorted({gpu["index"] for gpu in gpus} | set(runs))
    passed = [index for index in indexes if (runs.get(index) or {}).get("passed")]
    by_index = {gpu["index"]: gpu for gpu in gpus}
    failures = [_container_failure(index, by_index.get(index), runs.get(index), settings["verify_cuda_container_image"])
                for index in indexes if index not in passed]
    detail = f"{len(passed)} of {expected} GPUs passed ({settings['verify_cuda_container_image']})"
    return Check("CUDA in a container on every GPU (NVIDIA's vectorAdd sample)",
                 not failures and len(passed) == expected, "; ".join([detail, *failures]))


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in (text or "0").split(".")[:2] if part.isdigit())


def gpu_checks(settings: Mapping, pci: list[dict], smi: dict | None, toolkit: dict | None,
               docker_info: dict | None, container: dict | None, *, cuda: dict | None = None,
               switches: list[str] = (), fabric: list[dict] = (), persistence: dict | None = None,
               cuda_containers: dict | None = None) -> list[Check]:
    """Every check for one host, from its facts (pure: tested against fixtures)."""
    if not pci:
        return [Check("NVIDIA devices on the PCI bus", True, "none: nothing GPU to verify")]
    spec = gpu_spec(smi, pci)
    checks = [Check("NVIDIA devices on the PCI bus", True,
                    f"{len(pci)} ({', '.join(d['slot'] for d in pci)}), planner: {spec}")]
    gpus = (smi or {}).get("gpus") or []
    if not gpus:
        why = "nvidia-smi is not installed" if smi is None else f"nvidia-smi: {smi.get('error')}"
        return [*checks, Check("the driver answers", False, why)]
    driver, branch = smi["driver_version"], str(settings["nvidia_driver_branch"])
    expected = settings["verify_gpu_count"] or len(pci)
    checks += [
        Check("the driver answers", True, f"nvidia-smi: driver {driver}, CUDA {smi.get('cuda_version')}"),
        Check("driver branch", driver.startswith(f"{branch}."), f"{driver}, pinned branch {branch}"),
        Check("GPUs the driver sees", len(gpus) == expected, f"{len(gpus)}, expected {expected}"),
    ]
    if settings["cuda_toolkit_install"] and settings["cuda_source"] == "cuda_repo":
        pinned = str(settings["cuda_version"])
        found = ((toolkit or {}).get("cuda") or {}).get("version")
        checks += [
            Check("CUDA toolkit", _version(found) == _version(pinned),
                  f"{found or 'not found'} in {cuda_home(pinned)}, pinned {pinned}"),
            Check("the driver supports that CUDA", _version(smi.get("cuda_version")) >= _version(pinned),
                  f"driver's CUDA {smi.get('cuda_version')}, toolkit {pinned}"),
        ]
    if switches:  # NVIDIA's Fabric Manager guide: every GPU's fabric state Completed, status Success
        done = [gpu for gpu in fabric if gpu["state"] == "Completed" and gpu["status"] == "Success"]
        checks.append(Check("NVSwitch fabric (Fabric Manager)", len(done) == len(gpus) and bool(gpus),
                            f"{len(switches)} NVSwitches; fabric Completed on {len(done)} of {len(gpus)} GPUs"
                            + ("" if len(done) == len(gpus) else ": is nvidia-fabricmanager.service running?")))
    cuda = cuda or {"devices": 0, "ok": [], "error": "not probed"}
    hint = ""
    if "SYSTEM_NOT_READY" in (cuda["error"] or ""):
        hint = ": on NVSwitch boards Fabric Manager must run (systemctl status nvidia-fabricmanager)"
    checks.append(Check("CUDA works on every GPU (a context and an allocation each)",
                        not cuda["error"] and len(cuda["ok"]) == expected,
                        f"{len(cuda['ok'])} of {expected}" + (f"; {cuda['error']}{hint}" if cuda["error"] else "")))
    if settings["nvidia_driver_persistenced"]:
        enabled = [gpu for gpu in gpus if (persistence or {}).get(gpu["index"]) == "Enabled"]
        checks.append(Check("persistence mode", len(enabled) == len(gpus),
                            f"Enabled on {len(enabled)} of {len(gpus)} GPUs"))
    runtimes = sorted(((docker_info or {}).get("Runtimes") or {}))
    checks.append(Check("Docker has the nvidia runtime", "nvidia" in runtimes,
                        f"runtimes: {', '.join(runtimes) or 'Docker does not answer'}"))
    if container is None:
        checks.append(Check("a CUDA container sees the GPUs", False, "docker is not installed"))
    else:
        seen = len(container["gpus"])
        detail = f"{seen}, expected {expected}" if container["exit_code"] == 0 else container["output"][-300:]
        checks.append(Check("a CUDA container sees the GPUs", container["exit_code"] == 0 and seen == expected,
                            detail))
    checks.append(_cuda_containers_check(settings, gpus, cuda_containers, expected))
    return checks


def clock_check(settings: Mapping, clock: dict) -> Check:
    """The host's clock offset against `ntp_max_offset_ms` (pure: tested against recorded facts)."""
    limit = settings["ntp_max_offset_ms"]
    if clock["offset_s"] is None:
        ok = not settings["ntp_servers"]
        why = "" if ok else " (ntp_servers is set: is chronyd running, and does it reach them?)"
        return Check("clock offset", ok, f"unknown: not synchronised; {clock['detail']}{why}")
    offset_ms = clock["offset_s"] * 1000
    return Check("clock offset", abs(offset_ms) <= limit,
                 f"{offset_ms:+.3f} ms, at most {limit:g} ms allowed; {clock['detail']}")


def report(host_name: str, checks: list[Check], what: str = "GPU verification") -> str:
    """The checks as lines a person reads: `  ok    name: detail` / `  FAIL  name: detail`."""
    lines = [f"{host_name}: {what}"]
    lines += [f"  {'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}" for check in checks]
    return "\n".join(lines)


@operation()
def verified(report: str, ok: bool):
    """
    Pass (noop) or fail the host with `report` as its error output.

    + report: the host's verification report
    + ok: whether every check passed
    """
    if ok:
        host.noop(report)
        return
    yield StringCommand("echo", QuoteString(report), ">&2", "&&", "exit", "1")


@deploy("Verify", data_defaults=DEFAULTS)
def verify():
    """Check the host against its settings; log the report; fail the host if a check fails."""
    data = host.data
    settings = {key: data.get(key) for key in DEFAULTS}
    pci = nvidia_devices()
    facts = {}
    if pci:
        facts = {
            "smi": host.get_fact(NvidiaSmi),
            "toolkit": host.get_fact(JsonFile, path=f"{cuda_home(str(data.cuda_version))}/version.json"),
            "docker_info": host.get_fact(DockerSystemInfo),
            "container": host.get_fact(GpuContainerTest, image=data.nvidia_container_toolkit_test_image),
        }
        gpus = ",".join(str(gpu["index"]) for gpu in (facts["smi"] or {}).get("gpus") or [])
        if gpus:
            facts["cuda_containers"] = host.get_fact(GpuCudaContainers, image=data.verify_cuda_container_image,
                                                     gpus=gpus)
        switches = host.get_fact(NvidiaNvSwitches) or []
        facts.update(cuda=host.get_fact(CudaProbe), persistence=host.get_fact(NvidiaPersistence),
                     switches=switches, fabric=host.get_fact(NvidiaFabric) if switches else [])
    checks = gpu_checks(settings, pci, facts.get("smi"), facts.get("toolkit"), facts.get("docker_info"),
                        facts.get("container"), cuda=facts.get("cuda"), switches=facts.get("switches", []),
                        fabric=facts.get("fabric", []), persistence=facts.get("persistence"),
                        cuda_containers=facts.get("cuda_containers"))
    text = report(host.name, checks)
    logger.info(text)
    verified(name="GPU verification", report=text, ok=all(check.ok for check in checks))
    clock = clock_check(settings, host.get_fact(ClockOffset))
    text = report(host.name, [clock], "clock")
    logger.info(text)
    verified(name="Clock", report=text, ok=clock.ok)
