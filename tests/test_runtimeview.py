"""`deepfleet status`'s view of a runtime, from what the host probe returns: ready or why not, rates
from two scrapes, queue and KV use, per-GPU NVML series (the runtime's real /metrics text, with
GPUs from the fake NVML)."""

from __future__ import annotations

from deepfleet.runtimeview import load_summary, runtime_gpu_summary, runtime_view
from deepfleet.status import HostStatus
from deepfleet_runtime.config import GpuHealthSection
from deepfleet_runtime.engines.base import EngineStats
from deepfleet_runtime.gpuhealth import GpuHealth
from deepfleet_runtime.metrics import RuntimeMetrics
from tests.runtime.fake_nvml import FakeGpu, FakeNvml


class _Engine:
    ready = True

    def stats(self):
        return EngineStats(waiting=2, running=3, kv_cache_used_tokens=250, kv_cache_capacity_tokens=1000)


def _samples(text: str) -> dict[str, float]:
    """What the probe keeps of a scrape (deepfleet/status.py _PROBE)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("deepfleet_") and "_bucket" not in line:
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _probe(ready_status=200, ready=None, gpus=None):
    nvml = FakeNvml(gpus or [FakeGpu(temperature=64, utilization=87, memory_used=71 * 2**30)])
    health = GpuHealth(nvml, GpuHealthSection())
    metrics = RuntimeMetrics(_Engine(), nvml=nvml, gpu_health=health)
    health.check()
    metrics.requests.labels("chat", "200").inc(3)
    first = _samples(metrics.render().decode())
    metrics.requests.labels("chat", "200").inc(5)
    metrics.requests.labels("chat", "400").inc(1)
    metrics.generation_tokens.inc(400)
    health.check()
    second = _samples(metrics.render().decode())
    return {"ready_status": ready_status, "ready": ready or {"status": "ready"}, "first": first, "second": second,
            "interval": 2.0}


def test_rates_queue_kv_and_gpus_from_two_scrapes():
    view = runtime_view(_probe())
    assert view.ready and view.why_not == ""
    assert (view.requests_per_s, view.tokens_per_s, view.queue, view.running, view.kv_use) == (3.0, 200.0, 2, 3, 0.25)
    assert load_summary(view) == "3.0 req/s, 200 tok/s, queue 2, running 3, KV 25%"
    assert runtime_gpu_summary(view) == "0: 87%, 71.0/80.0 GiB, 64 °C"


def test_an_unhealthy_gpu_shows_why_and_its_last_xid():
    gpus = [FakeGpu(), FakeGpu(pending_xids=[79])]
    reasons = ["GPU 1: XID 79 (fatal per gpu_health.fatal_xids; reset the GPU, then restart the runtime)"]
    view = runtime_view(_probe(503, {"status": "unhealthy", "detail": reasons[0], "gpu_health": reasons}, gpus))
    assert not view.ready and view.why_not.startswith("GPU 1: XID 79")
    assert "1: 30%, 10.0/80.0 GiB, 45 °C, last XID 79 (out of service)" in runtime_gpu_summary(view)
    assert not HostStatus("h1", ["replica"], runtime=view).healthy


def test_a_runtime_that_does_not_answer_is_not_ready():
    view = runtime_view({"error": "<urlopen error [Errno 111] Connection refused>"})
    assert not view.ready and "Connection refused" in view.why_not and load_summary(view) == "-"
    assert runtime_view(None) is None  # a host without a runtime (a gateway alone, a Ray worker)


def test_a_counter_reset_between_scrapes_gives_no_negative_rate():
    probe = _probe()
    probe["first"], probe["second"] = probe["second"], probe["first"]
    assert runtime_view(probe).requests_per_s == 0.0
