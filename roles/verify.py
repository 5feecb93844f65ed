"""The verify role (deploys/verify.py): does a provisioned host show what its settings promise?

Read-only checks from facts, one report per host: the driver answers (nvidia-smi) with the pinned
branch, it sees the expected number of GPUs (`verify_gpu_count`, else the PCI count), CUDA really
works on each (a context and an allocation through the host's libcuda: error 802 on an NVSwitch
board without Fabric Manager fails here), the fabric is Completed where there are NVSwitches,
persistence mode is Enabled on every GPU, the CUDA
toolkit has the pinned version and the driver supports it, Docker has the nvidia runtime, and a
CUDA container (`nvidia_container_toolkit_test_image`) lists the same GPUs. A host that fails any
check fails the run, with the report as its error; a host without an NVIDIA device passes with
that said. The only thing verify starts on a host is that throwaway `docker run --rm` container.
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
from .gpu_facts import (CudaProbe, GpuContainerTest, NvidiaFabric, NvidiaNvSwitches, NvidiaPersistence, NvidiaSmi,
                        gpu_spec, nvidia_devices)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in (text or "0").split(".")[:2] if part.isdigit())


def gpu_checks(settings: Mapping, pci: list[dict], smi: dict | None, toolkit: dict | None,
               docker_info: dict | None, container: dict | None, *, cuda: dict | None = None,
               switches: list[str] = (), fabric: list[dict] = (), persistence: dict | None = None) -> list[Check]:
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
        switches = host.get_fact(NvidiaNvSwitches) or []
        facts.update(cuda=host.get_fact(CudaProbe), persistence=host.get_fact(NvidiaPersistence),
                     switches=switches, fabric=host.get_fact(NvidiaFabric) if switches else [])
    checks = gpu_checks(settings, pci, facts.get("smi"), facts.get("toolkit"), facts.get("docker_info"),
                        facts.get("container"), cuda=facts.get("cuda"), switches=facts.get("switches", []),
                        fabric=facts.get("fabric", []), persistence=facts.get("persistence"))
    text = report(host.name, checks)
    logger.info(text)
    verified(name="GPU verification", report=text, ok=all(check.ok for check in checks))
    clock = clock_check(settings, host.get_fact(ClockOffset))
    text = report(host.name, [clock], "clock")
    logger.info(text)
    verified(name="Clock", report=text, ok=clock.ok)
