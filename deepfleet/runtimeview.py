"""What `deepfleet status` shows of a runtime: ready or why not, and its load from two scrapes of its
/metrics a moment apart (requests/s, tokens/s, queue, KV cache use, per-GPU memory, utilisation,
temperature, last XID). Pure functions over what the host probe returned (deepfleet/status.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class RuntimeView:
    ready: bool
    why_not: str = ""  # what /ready said (or why it could not be asked)
    requests_per_s: float | None = None
    tokens_per_s: float | None = None  # generated
    queue: float | None = None  # waiting requests
    running: float | None = None
    kv_use: float | None = None  # share of the KV cache in use
    gpus: list[dict] = field(default_factory=list)  # index, name, util, mem_used, mem_total, temp, last_xid, healthy


def parse_samples(samples: dict[str, float]) -> list[tuple[str, dict, float]]:
    """`{'name{a="b"}': value}` (the probe's form) as (name, labels, value)."""
    parsed = []
    for key, value in samples.items():
        match = _SAMPLE.match(key)
        if match:
            labels = dict(_LABEL.findall(match.group("labels") or ""))
            parsed.append((match.group("name"), labels, value))
    return parsed


def _total(samples, name: str) -> float | None:
    values = [value for sample, _, value in samples if sample == name]
    return sum(values) if values else None


def _rate(first, second, name: str, seconds: float) -> float | None:
    before, after = _total(first, name), _total(second, name)
    if before is None or after is None or seconds <= 0:
        return None
    return max(after - before, 0.0) / seconds  # a restart in between resets counters: no negative rates


def runtime_view(probe: dict | None) -> RuntimeView | None:
    """The view of one runtime from the probe's `runtime` answer; None where the host runs none."""
    if probe is None:
        return None
    if "error" in probe:
        return RuntimeView(False, f"not answering: {probe['error']}")
    body = probe.get("ready") or {}
    ready = probe.get("ready_status") == 200
    why_not = "" if ready else str(body.get("detail") or body.get("status")
                                   or f"/ready HTTP {probe.get('ready_status')}")
    first, second = parse_samples(probe["first"]), parse_samples(probe["second"])
    seconds = probe["interval"]
    view = RuntimeView(ready, why_not, _rate(first, second, "deepfleet_requests_total", seconds),
                       _rate(first, second, "deepfleet_generation_tokens_total", seconds),
                       _total(second, "deepfleet_queue_depth"), _total(second, "deepfleet_batch_size"),
                       _total(second, "deepfleet_kv_cache_usage_ratio"))
    gpus: dict[str, dict] = {}
    for name, labels, value in second:
        field_name = {"deepfleet_gpu_utilization_ratio": "util", "deepfleet_gpu_memory_used_bytes": "mem_used",
                      "deepfleet_gpu_memory_total_bytes": "mem_total", "deepfleet_gpu_temperature_celsius": "temp",
                      "deepfleet_gpu_last_xid": "last_xid", "deepfleet_gpu_healthy": "healthy"}.get(name)
        if field_name and "gpu" in labels:
            gpu = gpus.setdefault(labels["gpu"], {"index": labels["gpu"], "name": labels.get("name", "")})
            gpu[field_name] = value
    view.gpus = [gpus[index] for index in sorted(gpus, key=int)]
    return view


def load_summary(view: RuntimeView | None) -> str:
    """'2.5 req/s, 130 tok/s, queue 0, running 3, KV 12%' ('-' where unknown)."""
    if view is None or view.requests_per_s is None and view.queue is None:
        return "-"
    def number(value, fmt):
        return "-" if value is None else format(value, fmt)
    return (f"{number(view.requests_per_s, '.1f')} req/s, {number(view.tokens_per_s, '.0f')} tok/s, "
            f"queue {number(view.queue, '.0f')}, running {number(view.running, '.0f')}, "
            f"KV {'-' if view.kv_use is None else f'{view.kv_use:.0%}'}")


def runtime_gpu_summary(view: RuntimeView) -> str:
    """'0: 87%, 71.2/80.0 GiB, 64 °C, last XID 79 (out)' per GPU, from the runtime's NVML series."""
    parts = []
    for gpu in view.gpus:
        words = [f"{gpu['index']}: {gpu['util']:.0%}" if "util" in gpu else f"{gpu['index']}:"]
        if "mem_used" in gpu and "mem_total" in gpu:
            words.append(f"{gpu['mem_used'] / 2**30:.1f}/{gpu['mem_total'] / 2**30:.1f} GiB")
        if "temp" in gpu:
            words.append(f"{gpu['temp']:.0f} °C")
        if gpu.get("last_xid"):
            words.append(f"last XID {gpu['last_xid']:.0f}")
        text = ", ".join(words)
        parts.append(f"{text} (out of service)" if gpu.get("healthy") == 0 else text)
    return "; ".join(parts)
