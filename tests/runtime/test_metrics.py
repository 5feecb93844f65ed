"""GPU metrics through NVML. No GPU exists here, so NVML is a stand-in module with NVML's API."""

from __future__ import annotations

from types import SimpleNamespace

from deepfleet_runtime.engines.base import EngineStats
from deepfleet_runtime.metrics import RuntimeMetrics


class _StandInNvml:
    NVML_TEMPERATURE_GPU = 0

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA A100-SXM4-80GB"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=(handle + 1) * 10**9, total=80 * 10**9)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=75)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 61


class _Engine:
    ready = True

    def stats(self):
        return EngineStats(waiting=3, running=5, kv_cache_used_tokens=250, kv_cache_capacity_tokens=1000,
                           weight_bytes=42)


def test_engine_load_and_gpu_series_are_exposed():
    text = RuntimeMetrics(_Engine(), nvml=_StandInNvml()).render().decode()
    assert "deepfleet_queue_depth 3.0" in text and "deepfleet_batch_size 5.0" in text
    assert "deepfleet_kv_cache_usage_ratio 0.25" in text
    assert 'deepfleet_gpu_memory_used_bytes{gpu="1",name="NVIDIA A100-SXM4-80GB"} 2e+09' in text
    assert 'deepfleet_gpu_utilization_ratio{gpu="0",name="NVIDIA A100-SXM4-80GB"} 0.75' in text
    assert 'deepfleet_gpu_temperature_celsius{gpu="0",name="NVIDIA A100-SXM4-80GB"} 61.0' in text
