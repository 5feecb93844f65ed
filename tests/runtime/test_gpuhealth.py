"""GPU health through NVML (a fake at the pynvml boundary: tests/runtime/fake_nvml.py): each condition
NVML can report, what the runtime.yaml policy makes of it, and what /ready and /metrics then say."""

from __future__ import annotations

import httpx
import pynvml
import pytest
from starlette.testclient import TestClient

from deepfleet_runtime.config import GpuHealthSection, LimitsSection
from deepfleet_runtime.engines.base import EngineStats
from deepfleet_runtime.gpuhealth import GpuHealth
from deepfleet_runtime.metrics import RuntimeMetrics
from deepfleet_runtime.server import create_app

from .fake_nvml import FakeGpu, FakeNvml

POLICY = GpuHealthSection()


def _health(*gpus: FakeGpu, **policy) -> GpuHealth:
    health = GpuHealth(FakeNvml(list(gpus)), GpuHealthSection(**policy) if policy else POLICY)
    health.check()
    return health


def test_a_healthy_gpu_keeps_the_replica_in_service():
    health = _health(FakeGpu(), FakeGpu())
    assert health.reasons == []
    assert [r.index for r in health.readings] == [0, 1]


@pytest.mark.parametrize("gpu, reason", [
    (FakeGpu(pending_xids=[79]), "GPU 1: XID 79"),
    (FakeGpu(ecc={"corrected": 3, "uncorrected": 2}), "GPU 1: 2 uncorrected ECC errors"),
    (FakeGpu(retired={"single_bit": 0, "double_bit": 1, "pending": True}),
     "GPU 1: a page retirement awaits a GPU reset"),
    (FakeGpu(remapped=(0, 1, 1, 0)), "GPU 1: a row remapping awaits a GPU reset"),
    (FakeGpu(remapped=(0, 0, 0, 1)), "GPU 1: row remapping failed"),
])
def test_each_fatal_condition_takes_the_replica_out_and_says_why(gpu, reason):
    health = _health(FakeGpu(), gpu)
    assert len(health.reasons) == 1 and health.reasons[0].startswith(reason), health.reasons


def test_an_xid_that_is_not_fatal_is_counted_but_keeps_serving():
    health = _health(FakeGpu(pending_xids=[13, 31]))  # graphics engine exception, MMU fault: the app's
    assert health.reasons == []
    assert health.readings[0].xid_errors == 2 and health.readings[0].last_xid == 31


def test_a_fatal_xid_stays_fatal_after_it_was_read():
    """XID events are read once; the replica stays out until the GPU is reset and the runtime restarts."""
    health = _health(FakeGpu(pending_xids=[48]))
    health.check()
    assert health.reasons and "XID 48" in health.reasons[0]


def test_the_policy_decides_thresholds_throttling_and_temperature():
    hot = FakeGpu(temperature=92, throttle=pynvml.nvmlClocksThrottleReasonHwThermalSlowdown,
                  ecc={"corrected": 0, "uncorrected": 2})
    assert len(_health(hot).reasons) == 1  # default: only the ECC errors; heat and throttling alert
    strict = _health(hot, max_uncorrected_ecc_errors=5, max_temperature_celsius=90,
                     throttle_reasons=["hw_thermal_slowdown"])
    assert strict.reasons == ["GPU 0: throttled (hw_thermal_slowdown)", "GPU 0: 92 °C (limit 90)"]
    assert _health(FakeGpu(pending_xids=[79]), fatal_xids=[]).reasons == []
    assert _health(FakeGpu(pending_xids=[79]), enabled=False).reasons == []


def test_gpus_without_ecc_or_remapping_are_read_without_errors():
    health = _health(FakeGpu(name="NVIDIA GeForce RTX 4090", ecc=None, retired=None, remapped=None))
    reading = health.readings[0]
    assert health.reasons == [] and reading.ecc is None and reading.remapped is None and reading.retired is None


def test_an_unknown_throttle_reason_in_the_policy_is_refused():
    from deepfleet_runtime.gpuhealth import check_policy

    with pytest.raises(ValueError, match="hw_slowdwn.*hw_slowdown"):
        check_policy(GpuHealthSection(throttle_reasons=["hw_slowdwn"]))


class _Engine:
    ready = True
    model_name = "tiny"
    reasoning_token_ids = None

    def stats(self):
        return EngineStats(kv_cache_capacity_tokens=10)


def test_ready_says_why_and_metrics_show_each_condition():
    nvml = FakeNvml([FakeGpu(), FakeGpu(pending_xids=[79], ecc={"corrected": 4, "uncorrected": 1},
                                        retired={"single_bit": 2, "double_bit": 1, "pending": True},
                                        throttle=pynvml.nvmlClocksThrottleReasonHwSlowdown)])
    health = GpuHealth(nvml, POLICY)
    engine = _Engine()
    app = create_app(engine, LimitsSection(), metrics=RuntimeMetrics(engine, nvml=nvml, gpu_health=health),
                     gpu_health=health)
    with TestClient(app) as client:
        health.check()
        answer = client.get("/ready")
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "unhealthy" and "GPU 1: XID 79" in body["detail"]
        assert body["gpu_health"][0].startswith("GPU 1: XID 79")
        text = client.get("/metrics").text
    assert 'deepfleet_gpu_healthy{gpu="0",name="NVIDIA H100 80GB HBM3"} 1.0' in text
    assert 'deepfleet_gpu_healthy{gpu="1",name="NVIDIA H100 80GB HBM3"} 0.0' in text
    assert 'deepfleet_gpu_xid_errors_total{gpu="1",name="NVIDIA H100 80GB HBM3"} 1.0' in text
    assert 'deepfleet_gpu_xid_errors_total{gpu="0",name="NVIDIA H100 80GB HBM3"} 0.0' in text
    assert 'deepfleet_gpu_last_xid{gpu="1",name="NVIDIA H100 80GB HBM3"} 79.0' in text
    assert 'deepfleet_gpu_ecc_errors_total{gpu="1",name="NVIDIA H100 80GB HBM3",type="uncorrected"} 1.0' in text
    assert 'deepfleet_gpu_retired_pages{cause="double_bit",gpu="1",name="NVIDIA H100 80GB HBM3"} 1.0' in text
    assert 'deepfleet_gpu_retired_pages_pending{gpu="1",name="NVIDIA H100 80GB HBM3"} 1.0' in text
    assert 'deepfleet_gpu_remapped_rows{gpu="0",kind="pending",name="NVIDIA H100 80GB HBM3"} 0.0' in text
    assert 'deepfleet_gpu_throttle_active{gpu="1",name="NVIDIA H100 80GB HBM3",reason="hw_slowdown"} 1.0' in text


def test_a_healthy_gpu_leaves_ready_alone():
    nvml = FakeNvml([FakeGpu()])
    health = GpuHealth(nvml, POLICY)
    engine = _Engine()
    with TestClient(create_app(engine, LimitsSection(), gpu_health=health)) as client:
        health.check()
        assert client.get("/ready").json()["status"] == "ready"


def test_the_role_settings_reach_runtime_yaml():
    import yaml
    from pyinfra.api.util import get_template

    from deepfleet_runtime.config import DEFAULT_FATAL_XIDS, RuntimeConfig
    from deepfleet_runtime.configfile import from_mapping
    from roles.common import TEMPLATES
    from roles.defaults import DEFAULTS
    from roles.runtime import runtime_yaml_context

    def render(settings):
        text = get_template(str(TEMPLATES / "runtime.yaml.j2")).render(**runtime_yaml_context(settings, "/m"))
        return from_mapping(RuntimeConfig, yaml.safe_load(text), "runtime.yaml").gpu_health

    assert render(DEFAULTS) == GpuHealthSection()
    assert tuple(DEFAULTS["runtime_gpu_health_fatal_xids"]) == DEFAULT_FATAL_XIDS
    policy = render({**DEFAULTS, "runtime_gpu_health_throttle_reasons": ["hw_slowdown"],
                     "runtime_gpu_health_max_temperature_celsius": 88, "runtime_gpu_health_fatal_xids": [79]})
    assert (policy.throttle_reasons, policy.max_temperature_celsius, policy.fatal_xids) == (["hw_slowdown"], 88, [79])
