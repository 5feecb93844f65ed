"""Prometheus metrics of the runtime: requests, tokens, latency, engine load and, with a GPU, NVML.

Counters and histograms are updated by the server as requests flow; queue depth, batch size, KV
usage and weight bytes are read from engine.stats() at scrape time; GPU memory, utilisation and
temperature come from NVML when a driver is there (no GPU: those series are simply absent).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RuntimeMetrics:
    """One registry per server: request counters and latency histograms, plus scrape-time collectors."""

    def __init__(self, engine, nvml=None, gpu_health=None):
        self.registry = CollectorRegistry()
        self.requests = Counter("deepfleet_requests", "Requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.prompt_tokens = Counter("deepfleet_prompt_tokens", "Prompt tokens of accepted requests",
                                     registry=self.registry)
        self.generation_tokens = Counter("deepfleet_generation_tokens", "Tokens generated",
                                         registry=self.registry)
        self.time_to_first_token = Histogram("deepfleet_time_to_first_token_seconds",
                                             "Time from a request's arrival to its first token",
                                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inter_token_latency = Histogram("deepfleet_inter_token_latency_seconds",
                                             "Time between consecutive tokens of a request",
                                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(EngineCollector(engine))
        gpu = NvmlCollector.create() if nvml is None else NvmlCollector(nvml)
        if gpu is not None:
            self.registry.register(gpu)
        if gpu_health is not None:  # XID, ECC, memory repair, throttling (gpuhealth.py)
            from .gpuhealth import GpuHealthCollector

            self.registry.register(GpuHealthCollector(gpu_health))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector:
    """Gauges from engine.stats(), read at scrape time."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats()
        capacity = stats.kv_cache_capacity_tokens
        for name, doc, value in (
            ("deepfleet_queue_depth", "Requests waiting to join the batch", stats.waiting),
            ("deepfleet_batch_size", "Requests in the running batch", stats.running),
            ("deepfleet_kv_cache_used_tokens", "KV cache slots in use (padding included)", stats.kv_cache_used_tokens),
            ("deepfleet_kv_cache_capacity_tokens", "KV cache slots available", capacity),
            ("deepfleet_kv_cache_usage_ratio", "Share of the KV cache in use",
             stats.kv_cache_used_tokens / capacity if capacity else 0.0),
            ("deepfleet_model_weight_bytes", "Bytes of the loaded weights (after quantisation)", stats.weight_bytes),
            ("deepfleet_engine_ready", "1 while the engine can serve", 1.0 if self.engine.ready else 0.0),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


class NvmlCollector:
    """GPU memory, utilisation and temperature per device, through NVML (nvidia-ml-py)."""

    def __init__(self, nvml):
        self.nvml = nvml

    @classmethod
    def create(cls) -> "NvmlCollector | None":
        """A collector when NVML initialises (a driver and a GPU are there), else None."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # no library, no driver or no device: no GPU series
            log.debug("no NVML: %s", exc)
            return None
        return cls(pynvml)

    def collect(self):
        labels = ["gpu", "name"]
        used = GaugeMetricFamily("deepfleet_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
        total = GaugeMetricFamily("deepfleet_gpu_memory_total_bytes", "GPU memory", labels=labels)
        utilization = GaugeMetricFamily("deepfleet_gpu_utilization_ratio", "GPU busy share", labels=labels)
        temperature = GaugeMetricFamily("deepfleet_gpu_temperature_celsius", "GPU temperature", labels=labels)
        nvml = self.nvml
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            key = [str(index), name.decode() if isinstance(name, bytes) else name]
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            used.add_metric(key, memory.used)
            total.add_metric(key, memory.total)
            utilization.add_metric(key, nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            temperature.add_metric(key, nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        yield from (used, total, utilization, temperature)


def gpu_capability() -> tuple[int, int] | None:
    """CUDA compute capability of GPU 0 through NVML, or None without a GPU."""
    collector = NvmlCollector.create()
    if collector is None:
        return None
    try:
        handle = collector.nvml.nvmlDeviceGetHandleByIndex(0)
        return tuple(collector.nvml.nvmlDeviceGetCudaComputeCapability(handle))
    except Exception:  # a driver without devices
        return None
