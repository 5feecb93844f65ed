"""A fake NVML at the pynvml boundary: the real pynvml module's constants and error classes, with
device answers the test sets (the real NVML needs an NVIDIA driver and GPU, which cannot exist here).
Each query a GPU does not support raises pynvml's own NVMLError_NotSupported, as NVML does."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    temperature: int = 45
    utilization: int = 30
    memory_used: int = 10 * 2**30
    memory_total: int = 80 * 2**30
    ecc: dict | None = field(default_factory=lambda: {"corrected": 0, "uncorrected": 0})  # None: no ECC
    retired: dict | None = None  # {"single_bit": n, "double_bit": n, "pending": bool}; None: not supported
    remapped: tuple | None = (0, 0, 0, 0)  # (correctable, uncorrectable, pending, failure); None: pre-Ampere
    throttle: int = 0  # bitmask of nvmlClocksThrottleReason*
    pending_xids: list[int] = field(default_factory=list)  # XID events not yet read


class FakeNvml:
    """Answers like pynvml for a list of FakeGpu; calls are recorded."""

    def __init__(self, gpus: list[FakeGpu]):
        self.gpus = gpus
        self.calls: list[str] = []
        self.registered: list[int] = []

    def __getattr__(self, name):  # constants and error classes: the real module's
        if name.startswith("nvml") and name[4:5].isupper() and callable(getattr(pynvml, name)) \
                and not isinstance(getattr(pynvml, name), type):
            raise AttributeError(f"FakeNvml does not fake {name}")
        return getattr(pynvml, name)

    def _gpu(self, handle) -> FakeGpu:
        return self.gpus[handle]

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetIndex(self, handle):
        return handle

    def nvmlDeviceGetName(self, handle):
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle):
        gpu = self._gpu(handle)
        return SimpleNamespace(used=gpu.memory_used, total=gpu.memory_total, free=gpu.memory_total - gpu.memory_used)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self._gpu(handle).utilization, memory=0)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu(handle).temperature

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter_type):
        ecc = self._gpu(handle).ecc
        if ecc is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        return ecc["uncorrected" if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else "corrected"]

    def nvmlDeviceGetRetiredPages(self, handle, cause):
        retired = self._gpu(handle).retired
        if retired is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        key = "double_bit" if cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR else "single_bit"
        return [0x1000 * i for i in range(retired[key])]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle):
        retired = self._gpu(handle).retired
        if retired is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.NVML_FEATURE_ENABLED if retired["pending"] else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetRemappedRows(self, handle):
        remapped = self._gpu(handle).remapped
        if remapped is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return remapped

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._gpu(handle).throttle

    def nvmlEventSetCreate(self):
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle, event_types, event_set):
        assert event_types & pynvml.nvmlEventTypeXidCriticalError and event_set == "event-set"
        self.registered.append(handle)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        for index, gpu in enumerate(self.gpus):
            if gpu.pending_xids and index in self.registered:
                return SimpleNamespace(device=index, eventType=pynvml.nvmlEventTypeXidCriticalError,
                                       eventData=gpu.pending_xids.pop(0), gpuInstanceId=0, computeInstanceId=0)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
