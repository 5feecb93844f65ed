"""Facts about a host's NVIDIA GPUs: present before any driver (sysfs), and per GPU once one runs.

    NvidiaPciDevices   PCI functions of vendor 0x10de with a display/3D class, read from sysfs
                       (no pciutils, no driver needed): [{"slot", "device_id", "model", "memory_gb"}]
    NvidiaSmi          nvidia-smi's view: {"gpus": [{index, name, memory_mib, driver_version,
                       compute_capability, pci_bus_id}], "driver_version", "cuda_version", "error"}
    NvidiaModuleState  {"loaded", "installed", "running", "built": {kernel: version}, "default", "driver"}
    GpuContainerTest   `docker run --gpus all IMAGE nvidia-smi -L`: {"exit_code", "gpus", "output"}
    NvidiaNvSwitches   NVSwitch PCI functions (HGX boards), read from sysfs: [slot, ...]
    NvidiaFabric       per GPU, nvidia-smi -q's Fabric state and status: [{"state", "status"}]
    NvidiaPersistence  per GPU, persistence mode: {index: "Enabled" | "Disabled"}
    CudaProbe          a CUDA context and a 1 MiB allocation on every GPU, through the host's libcuda
                       (python3 + ctypes): {"devices": N, "ok": [indexes], "error": "name (code)" | None}
    GpuCudaContainers  per GPU index, `docker run --rm --gpus device=N IMAGE` of NVIDIA's vectorAdd sample
                       (a context, allocations, a kernel, a checked result in a container):
                       {index: {"exit_code", "passed", "output"}}

`gpu_spec()` turns either view into the capacity planner's notation ("2xA100-80GB").
"""

from __future__ import annotations

import csv
import re
import shlex
from collections import Counter

from pyinfra import host
from pyinfra.api import FactBase

NVIDIA_VENDOR = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")  # VGA controller, 3D controller (data-centre GPUs)
NVSWITCH_CLASS = "0x0680"  # "other bridge": how NVSwitches (0x1af1 on HGX A100, 0x22a3 on HGX H100/H200) show
# PCI device id -> (model, memory in GB), so a host can be planned before its driver exists.
# Best effort: once the driver runs, nvidia-smi's answer is used instead.
KNOWN_DEVICES = {
    "0x20b0": ("A100", 40), "0x20f1": ("A100", 40), "0x20b2": ("A100", 80), "0x20b5": ("A100", 80),
    "0x2330": ("H100", 80), "0x2331": ("H100", 80), "0x2335": ("H200", 141),
    "0x2684": ("RTX4090", 24), "0x26b9": ("L40S", 48), "0x27b8": ("L4", 24), "0x1eb8": ("T4", 16),
}
SMI_FIELDS = ("index", "name", "memory.total", "driver_version", "compute_cap", "pci.bus_id")


def pci_scan_command(devices_dir: str = "/sys/bus/pci/devices") -> str:
    """Shell that prints `<slot> <class> <device id>` for each NVIDIA PCI function under `devices_dir`."""
    return (f'for d in {devices_dir}/*; do '
            f'[ "$(cat "$d/vendor" 2>/dev/null)" = {NVIDIA_VENDOR} ] && '
            'echo "${d##*/} $(cat "$d/class") $(cat "$d/device")"; done; true')


class NvidiaPciDevices(FactBase):
    """NVIDIA GPUs on the PCI bus (works before any driver is installed); [] when there are none."""

    def command(self) -> str:
        return pci_scan_command()

    @staticmethod
    def default() -> list:
        return []

    def process(self, output):
        devices = []
        for line in output:
            slot, pci_class, device_id = line.split()
            if not pci_class.startswith(GPU_CLASSES):
                continue  # the GPU's audio function, NVSwitches, bridges
            model, memory_gb = KNOWN_DEVICES.get(device_id, (f"NVIDIA-{device_id}", None))
            devices.append({"slot": slot, "device_id": device_id, "model": model, "memory_gb": memory_gb})
        return devices


class NvidiaNvSwitches(FactBase):
    """NVSwitch functions on the PCI bus (the board needs Fabric Manager); [] when there are none."""

    def command(self) -> str:
        return pci_scan_command()

    @staticmethod
    def default() -> list:
        return []

    def process(self, output):
        return [line.split()[0] for line in output if line.split()[1].startswith(NVSWITCH_CLASS)]


class NvidiaFabric(FactBase):
    """Per GPU, the Fabric section of `nvidia-smi -q`: [{"state", "status"}]; [] without nvidia-smi."""

    def requires_command(self) -> str:
        return "nvidia-smi"

    def command(self) -> str:
        return "nvidia-smi -q 2>/dev/null | grep -A2 -E '^ +Fabric$' | grep -E 'State|Status' || true"

    def process(self, output):
        gpus = []
        for line in output:
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "State":
                gpus.append({"state": value, "status": None})
            elif key == "Status" and gpus:
                gpus[-1]["status"] = value
        return gpus


class NvidiaPersistence(FactBase):
    """{GPU index: "Enabled" | "Disabled"} from nvidia-smi; {} when it does not answer."""

    def requires_command(self) -> str:
        return "nvidia-smi"

    def command(self) -> str:
        return "nvidia-smi --query-gpu=index,persistence_mode --format=csv,noheader 2>/dev/null || true"

    def process(self, output):
        rows = [[cell.strip() for cell in line.split(",")] for line in output]
        return {int(row[0]): row[1] for row in rows if len(row) == 2 and row[0].isdigit()}


_CUDA_PROBE = r"""
import ctypes, sys
def name(code):
    text = ctypes.c_char_p()
    cuda.cuGetErrorName(code, ctypes.byref(text))
    return (text.value or b"?").decode()
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as error:
    print("error=libcuda.so.1 cannot be loaded (%s)" % error); sys.exit()
code = cuda.cuInit(0)
if code:
    print("error=%s (%d)" % (name(code), code)); sys.exit()
count = ctypes.c_int()
cuda.cuDeviceGetCount(ctypes.byref(count))
print("devices=%d" % count.value)
for index in range(count.value):
    device, context, memory = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    for step in (lambda: cuda.cuDeviceGet(ctypes.byref(device), index),
                 lambda: cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device),
                 lambda: cuda.cuCtxSetCurrent(context),
                 lambda: cuda.cuMemAlloc_v2(ctypes.byref(memory), ctypes.c_size_t(1 << 20)),
                 lambda: cuda.cuMemFree_v2(memory)):
        code = step()
        if code:
            print("error=GPU %d: %s (%d)" % (index, name(code), code)); break
    else:
        print("ok=%d" % index)
    cuda.cuDevicePrimaryCtxRelease(device)
"""


class CudaProbe(FactBase):
    """Does CUDA work on every GPU? A context and an allocation on each, via the host's libcuda:
    {"devices": N, "ok": [indexes], "error": "CUDA_ERROR_... (code)" or None}."""

    def requires_command(self) -> str:
        return "python3"

    def command(self) -> str:
        return f"python3 -c {shlex.quote(_CUDA_PROBE)}"

    def process(self, output):
        values = {"devices": 0, "ok": [], "error": None}
        for line in output:
            key, _, value = line.partition("=")
            if key == "devices":
                values["devices"] = int(value)
            elif key == "ok":
                values["ok"].append(int(value))
            elif key == "error":
                values["error"] = value
        return values


class NvidiaSmi(FactBase):
    """Per-GPU facts from nvidia-smi; None when nvidia-smi is not installed. When the driver does
    not answer (module not loaded), "gpus" is empty and "error" says what nvidia-smi said."""

    def requires_command(self) -> str:
        return "nvidia-smi"

    def command(self) -> str:
        return (f"nvidia-smi --query-gpu={','.join(SMI_FIELDS)} --format=csv,noheader,nounits 2>&1; "
                "nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' || true")

    def process(self, output):
        gpus, cuda_version, errors = [], None, []
        for line in output:
            if line.startswith("CUDA Version:"):
                cuda_version = line.split(":", 1)[1].strip()
                continue
            row = [cell.strip() for cell in next(csv.reader([line]))]
            if len(row) == len(SMI_FIELDS) and row[0].isdigit():
                gpus.append({"index": int(row[0]), "name": row[1], "memory_mib": int(float(row[2])),
                             "driver_version": row[3], "compute_capability": row[4], "pci_bus_id": row[5]})
            elif line.strip():
                errors.append(line.strip())
        return {"gpus": gpus, "driver_version": gpus[0]["driver_version"] if gpus else None,
                "cuda_version": cuda_version, "error": " ".join(errors) or None}


class NvidiaModuleState(FactBase):
    """The nvidia module as built and loaded: {"loaded": version in /sys/module/nvidia, "installed":
    modinfo's version for the running kernel, "running": uname -r, "built": {kernel: version} of every
    kernel with an nvidia module, "default": the kernel the host boots next where grubby says
    (RHEL family), "driver": the version of DKMS's nvidia source in /usr/src}; unknown values None."""

    def command(self) -> str:
        return ('echo "loaded=$(cat /sys/module/nvidia/version 2>/dev/null)"; '
                'echo "installed=$(/sbin/modinfo -F version nvidia 2>/dev/null)"; '
                'echo "running=$(uname -r)"; '
                'for k in /lib/modules/*; do v=$(/sbin/modinfo -k "${k##*/}" -F version nvidia 2>/dev/null) '
                '&& [ -n "$v" ] && echo "built=${k##*/} $v"; done; '
                'd=$(grubby --default-kernel 2>/dev/null) && echo "default=${d#/boot/vmlinuz-}"; '
                'for s in /usr/src/nvidia-[0-9]*; do [ -d "$s" ] && echo "driver=${s##*/nvidia-}"; done; true')

    def process(self, output):
        values, built = {}, {}
        for line in output:
            key, _, value = line.partition("=")
            if key == "built" and value.strip():
                kernel, _, version = value.partition(" ")
                built[kernel] = version.strip()
            elif value.strip():
                values[key] = value.strip()
        return {**{key: values.get(key) for key in ("loaded", "installed", "running", "default", "driver")},
                "built": built}


class GpuContainerTest(FactBase):
    """GPUs a CUDA container sees: `docker run --rm --gpus all IMAGE nvidia-smi -L`."""

    def requires_command(self, image: str) -> str:
        return "docker"

    def command(self, image: str) -> str:
        return f"docker run --rm --gpus all {shlex.quote(image)} nvidia-smi -L 2>&1; echo \"exit_code=$?\""

    def process(self, output):
        exit_code = int(output[-1].split("=", 1)[1]) if output and output[-1].startswith("exit_code=") else None
        lines = output[:-1] if exit_code is not None else output
        return {"exit_code": exit_code, "gpus": [line for line in lines if re.match(r"GPU \d+:", line)],
                "output": "\n".join(lines)}


# One GPU's vectorAdd container gets this long (the image's first pull included) before it counts
# as hung: exit 124, a wedged GPU.
CUDA_CONTAINER_TIMEOUT_S = 600


class GpuCudaContainers(FactBase):
    """Does a container get working CUDA on each GPU? One `docker run --rm --gpus device=N IMAGE` per
    index of `gpus` ("0,1,..."), IMAGE running NVIDIA's vectorAdd sample, which prints "Test PASSED"
    (NVIDIA's container toolkit e2e tests and the GPU Operator's validation run the same sample):
    {index: {"exit_code", "passed": exit 0 and "Test PASSED" printed, "output"}}."""

    def requires_command(self, image: str, gpus: str) -> str:
        return "docker"

    def command(self, image: str, gpus: str) -> str:
        runs = []
        for index in (index.strip() for index in gpus.split(",")):
            if index.isdigit():
                name = f"deepfleet-verify-cuda-{index}"  # named, so that a run past its deadline is removed
                remove = f"docker rm -f {name} >/dev/null 2>&1 || true"
                runs.append(f'{remove}; echo "gpu={index}"; timeout {CUDA_CONTAINER_TIMEOUT_S} docker run --rm '
                            f'--name {name} --gpus device={index} {shlex.quote(image)} 2>&1; echo "exit_code=$?"; '
                            f'{remove}')
        return "; ".join(runs) or "true"

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output):
        runs, index, lines = {}, None, []
        for line in output:
            if line.startswith("gpu=") and line[4:].isdigit():
                index, lines = int(line[4:]), []
            elif line.startswith("exit_code=") and index is not None:
                code = int(line.split("=", 1)[1])
                runs[index] = {"exit_code": code, "passed": code == 0 and "Test PASSED" in lines,
                               "output": "\n".join(lines)}
                index = None
            elif index is not None:
                lines.append(line)
        return runs


def nvidia_devices() -> list[dict]:
    """The current host's NVIDIA GPUs on the PCI bus."""
    return host.get_fact(NvidiaPciDevices) or []


def nvswitches() -> list[str]:
    """The current host's NVSwitches (Fabric Manager boards)."""
    return host.get_fact(NvidiaNvSwitches) or []


def has_nvidia_gpu() -> bool:
    return bool(nvidia_devices())


def model_name(smi_name: str) -> str:
    """nvidia-smi's name in the planner's short form: "NVIDIA A100-SXM4-80GB" -> "A100"."""
    words = [w for w in re.split(r"[\s-]+", smi_name) if w not in ("NVIDIA", "GeForce", "Tesla", "")]
    if len(words) > 1 and words[0] in ("RTX", "GTX", "TITAN", "Quadro"):
        return words[0] + words[1]
    return words[0] if words else smi_name


def gpu_spec(smi: dict | None, pci_devices: list[dict]) -> str | None:
    """The host's GPUs in the capacity planner's notation, e.g. "2xA100-80GB" (None: no GPU).

    nvidia-smi's view wins when the driver answers; before that the PCI ids are used.
    """
    if smi and smi.get("gpus"):
        kinds = [f"{model_name(gpu['name'])}-{round(gpu['memory_mib'] / 1024)}GB" for gpu in smi["gpus"]]
    else:
        kinds = [f"{d['model']}-{d['memory_gb']}GB" if d["memory_gb"] else d["model"] for d in pci_devices]
    if not kinds:
        return None
    return "+".join(f"{count}x{kind}" for kind, count in Counter(kinds).items())
