"""What the gateway adds: the same requests direct to the runtime and through the gateway, side by side.

Starts a runtime (tiny DeepSeek-V3, CPU) and two gateways in front of it as separate processes:
one with its audit log on disk (the real setup: one fdatasync per batch of records) and one with
it on tmpfs (to show what the fsync costs). Requests alternate between the paths, so machine
noise hits all of them alike.

    .venv/bin/python bench/gateway_overhead.py [--requests 300] [--streams 10] [--seconds 8]

Last line: JSON with p50_added_ms (target <= 2), p99_added_ms (<= 10), stream_ratio (>= 0.95),
rps_gateway and the figures behind them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepfleet.apikeys import create_key, host_key_file, load_keyring  # noqa: E402
from deepfleet.demo import MODEL_NAME, ensure_tiny_model  # noqa: E402
from deepfleet.paths import cache_dir  # noqa: E402
from deepfleet.pki import ensure_server_cert, init_ca  # noqa: E402

RUNTIME = str(Path(sys.executable).parent / "deepfleet-runtime")
SHORT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
STREAM = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 256,
          "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def process(command: list[str], ready_url: str, log: Path, verify=True):
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SystemExit(f"{command[1]} exited:\n{log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, verify=verify, timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def gateway_config(root: Path, name: str, runtime_url: str, pki: Path, audit_dir: Path) -> tuple[Path, int]:
    port = free_port()
    config = {"listen": {"host": "127.0.0.1", "port": port},
              "tls": {"cert": str(pki / "hosts/bench/server.crt"), "key": str(pki / "hosts/bench/server.key")},
              "api_keys_file": str(root / "api_keys.json"), "upstreams": [{"name": "r1", "url": runtime_url}],
              "audit": {"dir": str(audit_dir)}, "limits": {"max_tokens": 1024},
              "metrics": {"host": "127.0.0.1", "port": free_port()}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latencies(clients: dict[str, httpx.Client], count: int, send) -> dict[str, list[float]]:
    """`send(client)` on every path in turn (order rotated every round); milliseconds per path."""
    names, result = list(clients), {name: [] for name in clients}
    for round_number in range(count):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            response = send(clients[name])
            result[name].append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return result


def short_chat(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/chat/completions", json=SHORT)


def list_models(client: httpx.Client) -> httpx.Response:
    """A request the runtime answers without its engine: what remains is the gateway's own cost."""
    return client.get("/v1/models")


def stream_rate(client: httpx.Client) -> float:
    """Completion tokens per second from the first to the last byte of one stream."""
    first = usage = None
    with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                first = first or time.perf_counter()
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
        end = time.perf_counter()
    return usage["completion_tokens"] / (end - first)


def throughput(make_client, seconds: float, workers: int = 8) -> float:
    done, stop = [], threading.Event()

    def work():
        with make_client() as client:
            while not stop.is_set():
                client.post("/v1/chat/completions", json=SHORT).raise_for_status()
                done.append(1)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return len(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()

    model = ensure_tiny_model(cache_dir() / "models" / MODEL_NAME, log=lambda m: print(m, file=sys.stderr))
    (ROOT / ".deepfleet").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gw-bench-", dir=ROOT / ".deepfleet") as tmp, \
            tempfile.TemporaryDirectory(prefix="gw-bench-audit-", dir="/dev/shm") as shm:
        root = Path(tmp)
        ca, _ = init_ca(root / "pki")
        ensure_server_cert(root / "pki", "bench", ["127.0.0.1"])
        key = create_key(root / "keyring.json", "bench", rpm=0, tpm=0, concurrency=0)
        (root / "api_keys.json").write_text(host_key_file(load_keyring(root / "keyring.json")))
        runtime_port = free_port()
        (root / "runtime.yaml").write_text(yaml.safe_dump({
            "model": {"name": MODEL_NAME, "path": str(model)}, "server": {"port": runtime_port}}))
        runtime_url = f"http://127.0.0.1:{runtime_port}"
        disk_config, disk_port = gateway_config(root, "gateway-disk", runtime_url, root / "pki", root / "audit")
        tmpfs_config, tmpfs_port = gateway_config(root, "gateway-tmpfs", runtime_url, root / "pki", Path(shm) / "audit")
        tls = ssl.create_default_context(cafile=str(ca.cert))
        headers = {"Authorization": f"Bearer {key}"}
        # One torch thread: the engine and the gateways then do not fight over this machine's cores.
        os.environ["OMP_NUM_THREADS"] = "1"
        with process([RUNTIME, "serve", "--config", str(root / "runtime.yaml")], f"{runtime_url}/ready", root / "runtime.log"), \
                process([RUNTIME, "gateway", "--config", str(disk_config)], f"https://127.0.0.1:{disk_port}/health",
                        root / "gw-disk.log", tls), \
                process([RUNTIME, "gateway", "--config", str(tmpfs_config)], f"https://127.0.0.1:{tmpfs_port}/health",
                        root / "gw-tmpfs.log", tls):
            make = {
                "direct": lambda: httpx.Client(base_url=runtime_url, timeout=120),
                "gateway": lambda: httpx.Client(base_url=f"https://127.0.0.1:{disk_port}", verify=tls, headers=headers,
                                                timeout=120),
                "gateway_tmpfs_audit": lambda: httpx.Client(base_url=f"https://127.0.0.1:{tmpfs_port}", verify=tls,
                                                            headers=headers, timeout=120),
            }
            clients = {name: factory() for name, factory in make.items()}
            latencies(clients, 20, short_chat)  # warm-up: connections, caches
            lat = latencies(clients, args.requests, short_chat)
            models = latencies(clients, args.requests, list_models)
            rates = {"direct": [], "gateway": []}
            for round_number in range(args.streams):
                for name in (("direct", "gateway") if round_number % 2 else ("gateway", "direct")):
                    rates[name].append(stream_rate(clients[name]))
            for client in clients.values():
                client.close()
            rps_direct = throughput(make["direct"], args.seconds)
            rps_gateway = throughput(make["gateway"], args.seconds)

    p50 = {name: statistics.median(values) for name, values in lat.items()}
    p99 = {name: percentile(values, 0.99) for name, values in lat.items()}
    tokens_per_s = {name: statistics.median(values) for name, values in rates.items()}
    models_p50 = {name: statistics.median(values) for name, values in models.items()}
    models_p99 = {name: percentile(values, 0.99) for name, values in models.items()}
    for name in lat:
        print(f"{name:>20}: chat p50 {p50[name]:7.2f} ms p99 {p99[name]:7.2f} ms | GET /v1/models p50 "
              f"{models_p50[name]:6.2f} ms p99 {models_p99[name]:6.2f} ms", file=sys.stderr)
    print(f"stream tokens/s: direct {tokens_per_s['direct']:.0f}, gateway {tokens_per_s['gateway']:.0f}", file=sys.stderr)
    print(f"requests/s (8 clients, max_tokens 1): direct {rps_direct:.1f}, gateway {rps_gateway:.1f}", file=sys.stderr)
    result = {
        "p50_added_ms": round(p50["gateway"] - p50["direct"], 2),
        "p99_added_ms": round(p99["gateway"] - p99["direct"], 2),
        "stream_ratio": round(tokens_per_s["gateway"] / tokens_per_s["direct"], 3),
        "rps_gateway": round(rps_gateway, 1),
        "rps_direct": round(rps_direct, 1),
        "p50_direct_ms": round(p50["direct"], 2),
        "p50_added_ms_audit_on_tmpfs": round(p50["gateway_tmpfs_audit"] - p50["direct"], 2),
        "p99_added_ms_audit_on_tmpfs": round(p99["gateway_tmpfs_audit"] - p99["direct"], 2),
        "stream_tokens_per_s_direct": round(tokens_per_s["direct"], 1),
        "models_p50_added_ms": round(models_p50["gateway"] - models_p50["direct"], 2),
        "models_p99_added_ms": round(models_p99["gateway"] - models_p99["direct"], 2),
        "models_p50_added_ms_audit_on_tmpfs": round(models_p50["gateway_tmpfs_audit"] - models_p50["direct"], 2),
        "requests": args.requests,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
