"""GPU health through NVML (nvidia-ml-py) and the runtime.yaml policy (`gpu_health`) that decides which
conditions take the replica out of service: /ready then answers 503 with the reasons, so gateways
stop routing to it, and `deepfleet status` shows them.

Read per GPU: XID events (NVML's critical-XID event set, read as they arrive; a fatal XID stays fatal
until the runtime restarts, since NVML reports each event once), volatile ECC error counts, retired
pages (pre-Ampere) and remapped rows (Ampere and newer), throttle reasons, temperature. A query a GPU
does not support (no ECC on a GeForce, no row remapping before Ampere) is simply absent.
"""

from __future__ import annotations

import difflib
import logging
import threading
from dataclasses import dataclass, field

from .config import GpuHealthSection

log = logging.getLogger(__name__)

# NVML's clocks-event (throttle) reason bits, by the names the policy and the metrics use.
THROTTLE_REASONS = {
    "gpu_idle": 0x1, "applications_clocks_setting": 0x2, "sw_power_cap": 0x4, "hw_slowdown": 0x8,
    "sync_boost": 0x10, "sw_thermal_slowdown": 0x20, "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80, "display_clock_setting": 0x100,
}


@dataclass
class GpuReading:
    """One GPU as NVML last reported it (None: the GPU does not support that query)."""

    index: int
    name: str
    temperature: int | None = None
    ecc: dict | None = None  # {"corrected": n, "uncorrected": n}, volatile (since the driver loaded)
    retired: dict | None = None  # {"single_bit": pages, "double_bit": pages, "pending": bool}
    remapped: dict | None = None  # {"correctable", "uncorrectable", "pending", "failure"}
    throttle: list[str] | None = None  # active throttle reasons
    xid_errors: int = 0  # XID events seen since the runtime started
    last_xid: int = 0
    fatal_xids: list[int] = field(default_factory=list)  # of those, the ones the policy calls fatal


def check_policy(policy: GpuHealthSection) -> None:
    """ValueError naming an unknown throttle reason (and the closest known one)."""
    for reason in policy.throttle_reasons:
        if reason not in THROTTLE_REASONS:
            close = difflib.get_close_matches(reason, THROTTLE_REASONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"gpu_health.throttle_reasons: unknown reason {reason!r}{hint} "
                             f"(known: {', '.join(THROTTLE_REASONS)})")


def unhealthy_reasons(reading: GpuReading, policy: GpuHealthSection) -> list[str]:
    """Why `reading` takes the replica out of service under `policy` (empty: it does not)."""
    if not policy.enabled:
        return []
    gpu, reasons = f"GPU {reading.index}", []
    for xid in dict.fromkeys(reading.fatal_xids):
        reasons.append(f"{gpu}: XID {xid} (fatal per gpu_health.fatal_xids; reset the GPU, then restart the runtime)")
    if reading.ecc and reading.ecc["uncorrected"] > policy.max_uncorrected_ecc_errors:
        reasons.append(f"{gpu}: {reading.ecc['uncorrected']} uncorrected ECC errors "
                       f"(gpu_health.max_uncorrected_ecc_errors {policy.max_uncorrected_ecc_errors})")
    if policy.retired_pages_pending and reading.retired and reading.retired["pending"]:
        reasons.append(f"{gpu}: a page retirement awaits a GPU reset")
    if policy.remapping_pending and reading.remapped and reading.remapped["pending"]:
        reasons.append(f"{gpu}: a row remapping awaits a GPU reset")
    if policy.remapping_failure and reading.remapped and reading.remapped["failure"]:
        reasons.append(f"{gpu}: row remapping failed (the GPU needs service)")
    throttled = [r for r in reading.throttle or [] if r in policy.throttle_reasons]
    if throttled:
        reasons.append(f"{gpu}: throttled ({', '.join(throttled)})")
    limit = policy.max_temperature_celsius
    if limit and reading.temperature is not None and reading.temperature > limit:
        reasons.append(f"{gpu}: {reading.temperature} °C (limit {limit})")
    return reasons


class GpuHealth:
    """Every GPU through `nvml` (the pynvml module, or a stand-in with its API), checked by `check()`,
    which `start()` runs every policy.check_interval_s on a thread."""

    def __init__(self, nvml, policy: GpuHealthSection):
        check_policy(policy)
        self.nvml, self.policy = nvml, policy
        self.readings: list[GpuReading] = []
        self.reasons: list[str] = []
        self._xids: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._events = self._register_xid_events()

    @classmethod
    def create(cls, policy: GpuHealthSection) -> "GpuHealth | None":
        """A checker on the real NVML when it initialises (driver and GPU present), else None."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # no library, no driver or no device
            log.info("GPU health: no NVML (%s)", exc)
            return None
        return cls(pynvml, policy)

    def _register_xid_events(self):
        nvml = self.nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            log.warning("GPU health: no NVML event set, XIDs unseen: %s", exc)
            return None
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(index),
                                              nvml.nvmlEventTypeXidCriticalError, events)
            except nvml.NVMLError as exc:
                log.warning("GPU health: GPU %d reports no XID events: %s", index, exc)
        return events

    def _drain_xid_events(self) -> None:
        nvml = self.nvml
        while self._events is not None:
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError_Timeout:
                return
            except nvml.NVMLError as exc:
                log.warning("GPU health: reading XID events failed: %s", exc)
                return
            if event.eventType & nvml.nvmlEventTypeXidCriticalError:
                index = nvml.nvmlDeviceGetIndex(event.device)
                self._xids.setdefault(index, []).append(int(event.eventData))
                log.error("GPU %d: XID %d", index, event.eventData)

    def check(self) -> list[str]:
        """Read every GPU now; returns (and keeps) the reasons the replica is out of service."""
        with self._lock:
            self._drain_xid_events()
            readings = [self._read(index) for index in range(self.nvml.nvmlDeviceGetCount())]
            reasons = [reason for reading in readings for reason in unhealthy_reasons(reading, self.policy)]
            self.readings, self.reasons = readings, reasons
        return reasons

    def _read(self, index: int) -> GpuReading:
        nvml = self.nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        xids = self._xids.get(index, [])
        reading = GpuReading(index, name.decode() if isinstance(name, bytes) else name, xid_errors=len(xids),
                             last_xid=xids[-1] if xids else 0,
                             fatal_xids=[x for x in xids if x in self.policy.fatal_xids])
        reading.temperature = _supported(nvml, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        corrected = _supported(nvml, nvml.nvmlDeviceGetTotalEccErrors, handle,
                               nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_VOLATILE_ECC)
        uncorrected = _supported(nvml, nvml.nvmlDeviceGetTotalEccErrors, handle,
                                 nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC)
        if uncorrected is not None:
            reading.ecc = {"corrected": corrected or 0, "uncorrected": uncorrected}
        pending = _supported(nvml, nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        if pending is not None:
            single = _supported(nvml, nvml.nvmlDeviceGetRetiredPages, handle,
                                nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS) or []
            double = _supported(nvml, nvml.nvmlDeviceGetRetiredPages, handle,
                                nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR) or []
            reading.retired = {"single_bit": len(single), "double_bit": len(double),
                               "pending": pending == nvml.NVML_FEATURE_ENABLED}
        rows = _supported(nvml, nvml.nvmlDeviceGetRemappedRows, handle)
        if rows is not None:
            reading.remapped = dict(zip(("correctable", "uncorrectable", "pending", "failure"), map(int, rows)))
        bits = _supported(nvml, nvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
        if bits is not None:
            reading.throttle = [name for name, bit in THROTTLE_REASONS.items() if bits & bit]
        return reading

    def start(self) -> None:
        """Check now, then every policy.check_interval_s on a daemon thread until close()."""
        self.check()
        threading.Thread(target=self._loop, name="gpu-health", daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(self.policy.check_interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - keep checking; the last answer stands
                log.exception("GPU health check failed")

    def close(self) -> None:
        self._stop.set()


def _supported(nvml, query, *args):
    """`query(*args)`, or None where the GPU or driver does not support it."""
    try:
        return query(*args)
    except nvml.NVMLError_NotSupported:
        return None
    except nvml.NVMLError as exc:
        log.warning("GPU health: %s failed: %s", getattr(query, "__name__", query), exc)
        return None


class GpuHealthCollector:
    """The health readings as Prometheus gauges and counters (labels gpu, name, and the condition's)."""

    def __init__(self, health: GpuHealth):
        self.health = health

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["gpu", "name"]
        healthy = GaugeMetricFamily("deepfleet_gpu_healthy", "1 unless the gpu_health policy takes this GPU's "
                                    "replica out of service", labels=labels)
        xids = CounterMetricFamily("deepfleet_gpu_xid_errors", "XID events since the runtime started", labels=labels)
        last_xid = GaugeMetricFamily("deepfleet_gpu_last_xid", "The last XID seen (0: none)", labels=labels)
        ecc = CounterMetricFamily("deepfleet_gpu_ecc_errors", "Volatile ECC error count (since the driver loaded)",
                                  labels=[*labels, "type"])
        retired = GaugeMetricFamily("deepfleet_gpu_retired_pages", "Retired memory pages", labels=[*labels, "cause"])
        retired_pending = GaugeMetricFamily("deepfleet_gpu_retired_pages_pending", "1 while a page retirement "
                                            "awaits a GPU reset", labels=labels)
        remapped = GaugeMetricFamily("deepfleet_gpu_remapped_rows", "Remapped memory rows, pending remaps and "
                                     "remapping failures", labels=[*labels, "kind"])
        throttle = GaugeMetricFamily("deepfleet_gpu_throttle_active", "1 while this throttle reason holds the "
                                     "clocks down", labels=[*labels, "reason"])
        policy = self.health.policy
        for reading in self.health.readings:
            key = [str(reading.index), reading.name]
            healthy.add_metric(key, 0.0 if unhealthy_reasons(reading, policy) else 1.0)
            xids.add_metric(key, float(reading.xid_errors))
            last_xid.add_metric(key, float(reading.last_xid))
            for kind, count in (reading.ecc or {}).items():
                ecc.add_metric([*key, kind], float(count))
            if reading.retired is not None:
                for cause in ("single_bit", "double_bit"):
                    retired.add_metric([*key, cause], float(reading.retired[cause]))
                retired_pending.add_metric(key, 1.0 if reading.retired["pending"] else 0.0)
            for kind, count in (reading.remapped or {}).items():
                remapped.add_metric([*key, kind], float(count))
            if reading.throttle is not None:
                for reason in THROTTLE_REASONS:
                    throttle.add_metric([*key, reason], 1.0 if reason in reading.throttle else 0.0)
        yield from (healthy, xids, last_xid, ecc, retired, retired_pending, remapped, throttle)
