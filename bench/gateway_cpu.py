"""The gateway's own cost, baseline tree against this one, in front of a fake upstream.

Starts bench/fake_upstream.py (answers at once) and two gateways as separate processes: one from
`--baseline` (another checkout, or a git revision of this repository, unpacked with git archive)
and one from this tree, with the same config. Rounds
alternate between them (and a direct path to the upstream), so machine noise hits all alike. The
gateways share one CPU core (taskset), the client and upstream use the others. CPU time is read
from /proc/<pid>/task/*/schedstat (nanoseconds, all threads).

    .venv/bin/python bench/gateway_cpu.py --baseline b77bd06 [--rounds 7] [--requests 200]
        [--streams 20] [--chunks 200] [--audit-dir tmpfs|disk]

Last line: JSON with, per tree, cpu_us_per_request, cpu_us_per_chunk, p50_added_ms (against the
direct path), and the candidate/baseline ratios of the three.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepfleet.apikeys import create_key, host_key_file, load_keyring  # noqa: E402
from deepfleet.pki import ensure_server_cert, init_ca  # noqa: E402

RUNTIME = str(Path(sys.executable).parent / "deepfleet-runtime")
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def baseline_tree(spec: str, into: Path) -> Path:
    """`spec` if it is a directory, else the runtime and deepfleet packages of git revision `spec`."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", spec, "runtime", "deepfleet"], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--baseline {spec}: neither a directory nor a git revision "
                         f"({archive.stderr.decode().strip()})")
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def wait_ready(url: str, proc: subprocess.Popen, log: Path, verify) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, verify=verify, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready:\n{log.read_text()[-2000:]}")


def start(command: list[str], log: Path, env: dict | None = None, cpus: set[int] | None = None) -> subprocess.Popen:
    out = open(log, "wb")
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    return proc


def gateway_config(root: Path, name: str, upstream: str, audit_dir: Path) -> tuple[Path, int]:
    port = free_port()
    config = {"listen": {"host": "127.0.0.1", "port": port},
              "tls": {"cert": str(root / "pki/hosts/bench/server.crt"), "key": str(root / "pki/hosts/bench/server.key")},
              "api_keys_file": str(root / "api_keys.json"), "upstreams": [{"name": "r1", "url": upstream}],
              "audit": {"dir": str(audit_dir)}, "limits": {"max_tokens": 4096}, "metrics": None}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def measure(client: httpx.Client, pid: int | None, requests: int, streams: int, chunks: int) -> dict:
    """One block on one path: latencies of `requests` short chats, CPU per request and per chunk."""
    before = cpu_ns(pid) if pid else 0
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        client.post("/v1/chat/completions", json=CHAT).raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
    middle = cpu_ns(pid) if pid else 0
    for _ in range(streams):
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "max_tokens": chunks, "stream": True}) as answer:
            answer.raise_for_status()
            for _ in answer.iter_raw():
                pass
    after = cpu_ns(pid) if pid else 0
    per_request = (middle - before) / requests / 1000
    per_stream = (after - middle) / streams / 1000 if streams else 0.0
    return {"p50_ms": statistics.median(latencies), "cpu_us_per_request": per_request,
            "cpu_us_per_chunk": (per_stream - per_request) / chunks if streams else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="the other checkout, or a git revision (e.g. b77bd06)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--audit-dir", choices=("tmpfs", "disk"), default="tmpfs",
                        help="tmpfs: the gateway's CPU alone; disk: with the cost of fdatasync")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    gateway_cpus, other_cpus = ({cores[0]}, set(cores[1:])) if len(cores) > 1 else (None, None)
    if other_cpus:
        os.sched_setaffinity(0, other_cpus)
    (ROOT / ".deepfleet").mkdir(exist_ok=True)
    audit_parent = "/dev/shm" if args.audit_dir == "tmpfs" else str(ROOT / ".deepfleet")
    with tempfile.TemporaryDirectory(prefix="gw-cpu-", dir=ROOT / ".deepfleet") as tmp, \
            tempfile.TemporaryDirectory(prefix="gw-cpu-audit-", dir=audit_parent) as audit_root:
        root = Path(tmp)
        trees = {"baseline": baseline_tree(args.baseline, root / "baseline-tree"), "candidate": ROOT}
        ca, _ = init_ca(root / "pki")
        ensure_server_cert(root / "pki", "bench", ["127.0.0.1"])
        key = create_key(root / "keyring.json", "bench", rpm=0, tpm=0, concurrency=0)
        (root / "api_keys.json").write_text(host_key_file(load_keyring(root / "keyring.json")))
        upstream_port = free_port()
        procs = [start([sys.executable, str(ROOT / "bench/fake_upstream.py"), str(upstream_port)],
                       root / "upstream.log", cpus=other_cpus)]
        upstream = f"http://127.0.0.1:{upstream_port}"
        tls = ssl.create_default_context(cafile=str(ca.cert))
        try:
            wait_ready(f"{upstream}/ready", procs[0], root / "upstream.log", True)
            pids, ports = {}, {}
            for name, tree in trees.items():
                config, ports[name] = gateway_config(root, name, upstream, Path(audit_root) / name)
                env = {**os.environ, "PYTHONPATH": f"{tree}:{tree}/runtime"}
                proc = start([RUNTIME, "gateway", "--config", str(config)], root / f"{name}.log", env, gateway_cpus)
                procs.append(proc)
                wait_ready(f"https://127.0.0.1:{ports[name]}/health", proc, root / f"{name}.log", tls)
                pids[name] = proc.pid
            clients = {name: httpx.Client(base_url=f"https://127.0.0.1:{ports[name]}", verify=tls, timeout=60,
                                          headers={"Authorization": f"Bearer {key}"}) for name in trees}
            clients["direct"] = httpx.Client(base_url=upstream, timeout=60)
            for name, client in clients.items():  # warm-up
                measure(client, pids.get(name), 50, 2, args.chunks)
            results = {name: [] for name in clients}
            order = list(clients)
            for round_number in range(args.rounds):
                shift = round_number % len(order)
                for name in order[shift:] + order[:shift]:
                    results[name].append(measure(clients[name], pids.get(name), args.requests, args.streams,
                                                 args.chunks))
            for client in clients.values():
                client.close()
        finally:
            for proc in reversed(procs):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
        shutil.rmtree(audit_root, ignore_errors=True)

    direct_p50 = statistics.median(r["p50_ms"] for r in results["direct"])
    summary = {}
    for name in trees:
        median = lambda field: statistics.median(r[field] for r in results[name])  # noqa: E731
        summary[name] = {"cpu_us_per_request": round(median("cpu_us_per_request"), 1),
                         "cpu_us_per_chunk": round(median("cpu_us_per_chunk"), 2),
                         "p50_added_ms": round(median("p50_ms") - direct_p50, 3)}
        print(f"{name:>10}: {summary[name]}", file=sys.stderr)
    base, cand = summary["baseline"], summary["candidate"]
    ratio = lambda field: round(cand[field] / base[field], 3) if base[field] else None  # noqa: E731
    print(json.dumps({**{f"{name}_{field}": value for name in trees for field, value in summary[name].items()},
                      "ratio_cpu_per_request": ratio("cpu_us_per_request"),
                      "ratio_cpu_per_chunk": ratio("cpu_us_per_chunk"),
                      "ratio_p50_added": ratio("p50_added_ms"), "direct_p50_ms": round(direct_p50, 3),
                      "audit_dir": args.audit_dir, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
