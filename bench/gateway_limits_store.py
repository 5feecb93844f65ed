"""What the shared limits store costs a request, side by side with the in-process buckets.

Per request the gateway checks the key's budget, reserves its limits, and when it ends settles
them and charges the budget (gateway/proxy.py). This runs exactly that sequence with the
gateway's own classes, for a key with rpm, tpm, concurrency and a daily budget:

- embedded: limits.KeyLimiter + the budget journal on disk (one gateway, usagestore.JournalCounts);
- store: sharedlimits.SharedLimiter + usagestore.StoreCounts on a real redis-server on loopback,
  over TLS 1.3 with a password, as roles/limits_store.py sets it up (Debian's redis-server);
- store_plain: the same without TLS (what TLS adds).

Rounds alternate between the three so that machine noise hits them alike. Sequential: the time of
one request's admission (check + reserve) and its settlement work, p50/p99. Concurrent: requests
per second with `--concurrency` requests in flight (one event loop, as one gateway process).

    .venv/bin/python bench/gateway_limits_store.py [--requests 2000] [--rounds 5] [--concurrency 32]

Last line: JSON with the added p50/p99 microseconds per request of the store, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "runtime"))

from deepfleet.pki import ensure_server_cert, init_ca  # noqa: E402
from deepfleet_runtime.gateway.auth import KeyRecord  # noqa: E402
from deepfleet_runtime.gateway.budgets import Budgets  # noqa: E402
from deepfleet_runtime.gateway.config import LimitsSection, LimitsStoreSection  # noqa: E402
from deepfleet_runtime.gateway.limits import KeyLimiter, Refusal  # noqa: E402
from deepfleet_runtime.gateway.sharedlimits import SharedLimiter  # noqa: E402
from deepfleet_runtime.gateway.store import LimitsStore  # noqa: E402

KEY = KeyRecord("bench", "x", rpm=10**9, tpm=10**12, concurrency=10**6, tokens_per_day=10**15)
TOKENS = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(root: Path, tls: tuple[Path, Path, Path] | None) -> tuple[subprocess.Popen, str, Path]:
    port, password = free_port(), secrets.token_urlsafe(24)
    (root / "password").write_text(password)
    lines = ["bind 127.0.0.1", f"dir {root}", "appendonly yes", "appendfsync everysec", 'save ""',
             f"requirepass {password}", "daemonize no", f"logfile {root / 'redis.log'}"]
    if tls:
        lines += ["port 0", f"tls-port {port}", f"tls-ca-cert-file {tls[0]}", f"tls-cert-file {tls[1]}",
                  f"tls-key-file {tls[2]}", "tls-auth-clients no", 'tls-protocols "TLSv1.3"']
    else:
        lines.append(f"port {port}")
    (root / "redis.conf").write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(["redis-server", str(root / "redis.conf")])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.02)
    return process, f"{'rediss' if tls else 'redis'}://127.0.0.1:{port}/0", root / "password"


class Path_:
    """One way of keeping limits: what a request does with it."""

    def __init__(self, name: str, limiter, budgets: Budgets):
        self.name, self.limiter, self.budgets = name, limiter, budgets

    async def request(self) -> tuple[float, float]:
        """(seconds to admit, seconds of the settling work done in the request's task)."""
        started = time.perf_counter()
        assert await self.budgets.check(KEY) is None
        reservation = await self.limiter.admit(KEY, TOKENS)
        admitted = time.perf_counter()
        assert not isinstance(reservation, Refusal), reservation
        reservation.settle(TOKENS // 3)
        self.budgets.charge(KEY, TOKENS // 3)
        return admitted - started, time.perf_counter() - admitted


async def sequential(path: Path_, count: int) -> list[float]:
    times = []
    for _ in range(count):
        admit, settle = await path.request()
        times.append(admit + settle)
    await asyncio.sleep(0.01)  # background settles finish
    return times


async def concurrent(path: Path_, count: int, width: int) -> float:
    started = time.perf_counter()
    left = count

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await path.request()

    await asyncio.gather(*(worker() for _ in range(width)))
    return count / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args, work: Path) -> dict:
    ca, _ = init_ca(work / "pki")
    server, _ = ensure_server_cert(work / "pki", "store", ["localhost", "127.0.0.1"])
    (work / "tls").mkdir()
    (work / "plain").mkdir()
    tls_process, tls_url, tls_password = start_redis(work / "tls", (ca.cert, server.cert, server.key))
    plain_process, plain_url, plain_password = start_redis(work / "plain", None)
    try:
        stores = {
            "store": LimitsStore(LimitsStoreSection(url=tls_url, password_file=tls_password, ca=ca.cert, gateways=2)),
            "store_plain": LimitsStore(LimitsStoreSection(url=plain_url, password_file=plain_password, gateways=2)),
        }
        paths = [Path_("embedded", KeyLimiter(LimitsSection()), Budgets.for_gateway(None, work / "journal"))]
        for name, store in stores.items():
            await store.start()
            assert store.up, store.error
            paths.append(Path_(name, SharedLimiter(store, LimitsSection()), Budgets.for_gateway(store, None)))
        for path in paths:  # warm up: connections, scripts loaded
            await sequential(path, 200)
        latencies = {path.name: [] for path in paths}
        rates = {path.name: [] for path in paths}
        for _ in range(args.rounds):
            for path in paths:
                latencies[path.name] += await sequential(path, args.requests // args.rounds)
                rates[path.name].append(await concurrent(path, args.requests // args.rounds, args.concurrency))
        for store in stores.values():
            await store.aclose()
        for path in paths:
            path.budgets.close()
    finally:
        tls_process.kill()
        plain_process.kill()
    p50 = {name: statistics.median(values) * 1e6 for name, values in latencies.items()}
    p99 = {name: percentile(values, 0.99) * 1e6 for name, values in latencies.items()}
    rps = {name: statistics.median(values) for name, values in rates.items()}
    for name in latencies:
        print(f"{name:>12}: per request p50 {p50[name]:8.1f} us  p99 {p99[name]:8.1f} us  | "
              f"{rps[name]:8.0f} requests/s with {args.concurrency} in flight", file=sys.stderr)
    return {
        "store_added_p50_us": round(p50["store"] - p50["embedded"], 1),
        "store_added_p99_us": round(p99["store"] - p99["embedded"], 1),
        "store_p50_ratio": round(p50["store"] / p50["embedded"], 2),
        "store_rps_ratio": round(rps["store"] / rps["embedded"], 3),
        "tls_added_p50_us": round(p50["store"] - p50["store_plain"], 1),
        "p50_us": {name: round(value, 1) for name, value in p50.items()},
        "p99_us": {name: round(value, 1) for name, value in p99.items()},
        "requests_per_s": {name: round(value) for name, value in rps.items()},
        "requests": args.requests, "concurrency": args.concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path, sequential and concurrent each")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="limits-store-bench-") as work:
        result = asyncio.run(run(args, Path(work)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
