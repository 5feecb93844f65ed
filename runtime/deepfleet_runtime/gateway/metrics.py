"""The gateway's Prometheus metrics (text format 0.0.4), served on a loopback-only listener."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    quoted = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, quoted)) + "}"


def _number(value: float) -> str:
    """Every digit (the text format takes Go floats; `:g` would round 1234567 to 1.23457e+06)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help_text, labels
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, *label_values, amount: float = 1) -> None:
        self.values[label_values] += amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}\n# TYPE {self.name} counter\n"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labels, key)} {_number(value)}\n"


class Histogram:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (), buckets=LATENCY_BUCKETS):
        self.name, self.help, self.labels, self.buckets = name, help_text, labels, buckets
        self.counts: dict[tuple, list[int]] = {}
        self.sums: dict[tuple, float] = defaultdict(float)

    def observe(self, value: float, *label_values) -> None:
        counts = self.counts.setdefault(label_values, [0] * (len(self.buckets) + 1))
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                counts[index] += 1
        counts[-1] += 1
        self.sums[label_values] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}\n# TYPE {self.name} histogram\n"
        for key, counts in sorted(self.counts.items()):
            for bound, count in zip((*self.buckets, "+Inf"), counts):
                names, values = (*self.labels, "le"), (*key, bound if bound == "+Inf" else f"{bound:g}")
                yield f"{self.name}_bucket{_labels(names, values)} {count}\n"
            yield f"{self.name}_sum{_labels(self.labels, key)} {self.sums[key]:.6f}\n"
            yield f"{self.name}_count{_labels(self.labels, key)} {counts[-1]}\n"


class Live:
    """A family read from live state when scraped: `read()` returns {label values: value}."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...], read: Callable[[], dict],
                 kind: str = "gauge"):
        self.name, self.help, self.labels, self.read, self.kind = name, help_text, labels, read, kind

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        for key, value in sorted(self.read().items()):
            yield f"{self.name}{_labels(self.labels, key)} {_number(value)}\n"


class GatewayMetrics:
    """Counters the request path updates; gauges are added by the app from live state."""

    def __init__(self):
        self.requests = Counter("deepfleet_gateway_requests_total", "Requests answered, by route, status "
                                "and key id.", ("route", "status", "key"))
        self.latency = Histogram("deepfleet_gateway_request_seconds", "Time from request to the end of "
                                 "the response.", ("route",))
        self.tokens = Counter("deepfleet_gateway_tokens_total", "Tokens used, by key and kind.", ("key", "kind"))
        self.queue_wait = Histogram("deepfleet_gateway_queue_seconds", "Time a request waited for a slot "
                                    "(gateway_max_in_flight).")
        self.families: list = [self.requests, self.latency, self.tokens, self.queue_wait]

    def add(self, family) -> None:
        self.families.append(family)

    def render(self) -> str:
        return "".join(line for family in self.families for line in family.render())
