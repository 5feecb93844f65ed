"""`deepfleet status`: per host, the runtime release it serves, whether its services run, whether its
runtime is ready (or why not) and how loaded it is (deepfleet/runtimeview.py), how every gateway sees
it (healthy, drained) and what its GPUs are doing. Read-only: one ssh command per host, and
`gateway-admin status` on each gateway."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .fleet import Fleet, FleetHost
from .remote import RemoteError, run_remote
from .runtimeview import RuntimeView, runtime_view

SCRAPE_INTERVAL_S = 1.0  # between the probe's two scrapes of the runtime's /metrics (for rates)

# Runs as root on the host: the current runtime release, the deepfleet units, the GPUs, and the
# runtime's /ready and two scrapes of its /metrics (mutual TLS with the host's client certificate
# where the runtime serves it; only deepfleet_* samples, histogram buckets left out).
_PROBE = r"""
import json, os, shutil, ssl, subprocess, sys, time, urllib.error, urllib.request
home, runtime_url, tls_dir, interval = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def get(path):
    context = None
    if runtime_url.startswith("https://"):
        context = ssl.create_default_context(cafile=os.path.join(tls_dir, "ca.crt"))
        context.load_cert_chain(os.path.join(tls_dir, "client.crt"), os.path.join(tls_dir, "client.key"))
    try:
        with urllib.request.urlopen(runtime_url + path, context=context, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
def samples():
    out = {}
    for line in get("/metrics")[1].splitlines():
        if line.startswith("deepfleet_") and "_bucket" not in line:
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
runtime = None
if runtime_url:
    try:
        status, body = get("/ready")
        try:
            ready = json.loads(body)
        except ValueError:
            ready = {"detail": body[:200]}
        first, started = samples(), time.monotonic()
        time.sleep(interval)
        second = samples()
        runtime = {"ready_status": status, "ready": ready, "first": first, "second": second,
                   "interval": time.monotonic() - started}
    except Exception as exc:
        runtime = {"error": str(exc)[:200]}
def read(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
units = {}
for unit in ("deepfleet-runtime", "deepfleet-gateway", "deepfleet-ray"):
    state = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True).stdout.strip()
    enabled = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True).returncode == 0
    if state == "active" or enabled:
        units[unit] = state
gpus = None
if shutil.which("nvidia-smi"):
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,utilization.gpu,memory.used,memory.total",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True)
    gpus = [dict(zip(("index", "name", "util", "used_mib", "total_mib"), [c.strip() for c in line.split(",")]))
            for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else {"error": out.stderr.strip()}
print(json.dumps({"release": read(os.path.join(home, "releases", "current", "release.json")), "units": units,
                  "gpus": gpus, "runtime": runtime}))
"""


@dataclass
class HostStatus:
    name: str
    jobs: list[str]
    release: dict | None = None
    units: dict = field(default_factory=dict)
    gpus: list | dict | None = None
    at_gateways: dict = field(default_factory=dict)  # gateway -> its state of this replica
    runtime: RuntimeView | None = None  # replicas: ready or why not, load, GPUs through NVML
    error: str = ""

    @property
    def healthy(self) -> bool:
        if self.error or any(state != "active" for state in self.units.values()):
            return False
        if self.runtime is not None and not self.runtime.ready:
            return False
        return all(s and s["healthy"] and not s["draining"] for s in self.at_gateways.values())


def fleet_status(fleet: Fleet) -> list[HostStatus]:
    """The status of every host of `fleet`, in inventory order."""
    hosts = list(fleet.hosts.values())
    with ThreadPoolExecutor(max_workers=min(16, len(hosts) or 1)) as pool:
        probes = list(pool.map(_probe, hosts))
        views = dict(zip((g.name for g in fleet.gateways), pool.map(_gateway_view, fleet.gateways)))
    statuses = []
    for host, probe in zip(hosts, probes):
        jobs = [job for job, on in (("gateway", host.gateway), ("replica", host.replica)) if on]
        status = HostStatus(host.name, jobs or ["ray worker"])
        if isinstance(probe, str):
            status.error = probe
        else:
            status.release, status.units, status.gpus = probe["release"], probe["units"], probe["gpus"]
            status.runtime = runtime_view(probe.get("runtime"))
        if host.replica:
            status.at_gateways = {gateway: view.get(host.name) if isinstance(view, dict) else None
                                  for gateway, view in views.items() if fleet.grouped or gateway == host.name}
        statuses.append(status)
    for gateway, view in views.items():
        if isinstance(view, str):
            next(s for s in statuses if s.name == gateway).error = view
    return statuses


def _probe(host: FleetHost) -> dict | str:
    try:
        settings = host.settings
        runtime_url = (settings.get("runtime_url") or "") if host.replica else ""
        result = run_remote(host.ssh, ["python3", "-c", _PROBE, settings["deepfleet_home"], runtime_url,
                                       f"{settings.get('deepfleet_config_dir', '/etc/deepfleet')}/tls",
                                       str(SCRAPE_INTERVAL_S)], sudo=host.sudo, timeout=60)
        return json.loads(result.stdout)
    except (RemoteError, ValueError) as exc:
        return str(exc)


def _gateway_view(gateway: FleetHost) -> dict | str:
    try:
        code, status = gateway.admin("status", timeout=60)
    except RemoteError as exc:
        return str(exc)
    if code != 0:
        return f"{gateway.name}: its admin socket answered {status}"
    return {upstream["name"]: upstream for upstream in status["upstreams"]}


def gpu_summary(gpus) -> str:
    """'2x A100: 87%, 71.2/80.0 GiB' (per kind), '-' without NVIDIA GPUs."""
    if gpus is None:
        return "-"
    if isinstance(gpus, dict):
        return f"nvidia-smi: {gpus.get('error', '?')[:60]}"
    parts = []
    for gpu in gpus:
        used, total = float(gpu["used_mib"]) / 1024, float(gpu["total_mib"]) / 1024
        parts.append(f"{gpu['index']}: {gpu['util']}%, {used:.1f}/{total:.1f} GiB")
    return "; ".join(parts) or "-"


def gateway_summary(at_gateways: dict) -> str:
    """'gw1 ok, gw2 drained' for a replica."""
    words = []
    for gateway, state in at_gateways.items():
        if state is None:
            words.append(f"{gateway} unknown")
        elif state["draining"]:
            words.append(f"{gateway} drained")
        elif state["healthy"]:
            words.append(f"{gateway} ok")
        else:
            words.append(f"{gateway} down ({state['last_error'][:40]})")
    return ", ".join(words) or "-"
