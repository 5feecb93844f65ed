"""Benchmark: pushing an encrypted model vs plain `scp` of the same bytes, over the same SSH link.

One disposable test host (deepfleet.testhosts, loopback only). A 1 GiB random "model" is
encrypted (encrypt_gbps: read + hash + AES-256-GCM + hash + write), decrypted back into memory as
the runtime's loader does (decrypt_gbps), then pushed with the model role (deploys/model_push.py:
resumable SFTP over pyinfra's own SSH connection into the host's staging directory) and copied
with `scp` of the plaintext, alternately, ROUNDS times (the machine is shared and noisy).
push_vs_scp is the median ratio of throughputs (push transfer / scp); push_deploy_vs_scp uses the
whole deploy's wall time instead (pyinfra start, facts, keys). Then the unchanged model is pushed
again: repush_bytes is what that run sent. The last line is JSON.

    .venv/bin/python bench/model_push.py [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfleet import testhosts  # noqa: E402
from deepfleet.modelkeys import create_model_keys  # noqa: E402
from deepfleet.modelpack import encrypt_model  # noqa: E402
from deepfleet.paths import LOCAL_INVENTORY, PROJECT_ROOT, cache_dir  # noqa: E402
from deepfleet_runtime.modelstore import Release  # noqa: E402

MODEL = "bench-model"
PUSH_DEPLOY = PROJECT_ROOT / "deploys" / "model_push.py"
PUSH_LINE = re.compile(r"model push \S+: sent (\d+) bytes, [\d.]+ GB in ([\d.]+) s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deepfleet-bench-push-", dir=os.environ.get("BENCH_DIR")))
    fleet = testhosts.TestFleet(work / "hosts")
    try:
        print(json.dumps(run(work, fleet, args.size_mib << 20, args.rounds)))
    finally:
        fleet.destroy()
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, fleet: testhosts.TestFleet, size: int, rounds: int) -> dict:
    source = _random_model(work / "model", size)
    keys, _ = create_model_keys(work / "keys")
    started = time.perf_counter()
    manifest = encrypt_model(source, work / "release", MODEL, keys, log=_log)
    encrypt_s = time.perf_counter() - started
    started = time.perf_counter()
    plaintext = Release.open(work / "release", keys.keys).read_file("model.safetensors")
    decrypt_s = time.perf_counter() - started
    assert len(plaintext) == size
    del plaintext

    fleet.start(1, testhosts.ensure_image(cache_dir() / "testhost", log=_log))
    (name, data), = fleet.inventory_hosts({"model_name": MODEL, "model_source": str(work / "release"),
                                          "model_keys_dir": str(keys.path), "deepfleet_cache_dir": str(work / "cache")})
    (work / "inventory.json").write_text(json.dumps({"hosts": [[name, data]]}))
    host = fleet.hosts[0]
    staging = f"/opt/deepfleet/models/.{manifest.release_name}.partial"
    scp = ["scp", "-q", "-P", str(host.ssh_port), "-i", data["ssh_key"], "-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}",
           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", str(source / "model.safetensors"),
           f"{data['ssh_user']}@127.0.0.1:/tmp/scp-copy"]
    _deploy(work)  # the base role's directories and the keys, so rounds time the push itself
    _on_host(host, f"rm -rf {staging}")
    rows = []
    for round_number in range(rounds):
        started = time.perf_counter()
        subprocess.run(scp, check=True)
        scp_s = time.perf_counter() - started
        _on_host(host, "rm -f /tmp/scp-copy")
        started = time.perf_counter()
        sent, transfer_s = _deploy(work)
        deploy_s = time.perf_counter() - started
        _on_host(host, f"rm -rf {staging}")
        rows.append({"scp_mb_s": size / 1e6 / scp_s, "push_mb_s": sent / 1e6 / transfer_s,
                     "push_deploy_mb_s": sent / 1e6 / deploy_s})
        _log(f"round {round_number + 1}: scp {rows[-1]['scp_mb_s']:.0f} MB/s, push {rows[-1]['push_mb_s']:.0f} MB/s "
             f"(whole deploy {rows[-1]['push_deploy_mb_s']:.0f} MB/s)")
    _deploy(work)
    repush_bytes, _ = _deploy(work)
    return {
        "size_bytes": size,
        "encrypted_bytes": manifest.encrypted_bytes,
        "scp_mb_s": round(statistics.median(r["scp_mb_s"] for r in rows), 1),
        "push_mb_s": round(statistics.median(r["push_mb_s"] for r in rows), 1),
        "push_vs_scp": round(statistics.median(r["push_mb_s"] / r["scp_mb_s"] for r in rows), 3),
        "push_deploy_vs_scp": round(statistics.median(r["push_deploy_mb_s"] / r["scp_mb_s"] for r in rows), 3),
        "repush_bytes": repush_bytes,
        "encrypt_gbps": round(size / 1e9 / encrypt_s, 3),
        "decrypt_gbps": round(size / 1e9 / decrypt_s, 3),
        "rounds": rounds,
    }


def _deploy(work: Path) -> tuple[int, float]:
    """Run deploys/model_push.py; (bytes the push sent, seconds its transfer took), (0, 0) if none."""
    result = subprocess.run([sys.executable, "-m", "pyinfra", "-y", str(LOCAL_INVENTORY), str(PUSH_DEPLOY)],
                            cwd=PROJECT_ROOT, env={**os.environ, "DEEPFLEET_HOSTS_FILE": str(work / "inventory.json")},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the push deploy failed:\n{result.stderr[-3000:]}")
    match = PUSH_LINE.search(result.stderr)
    return (int(match.group(1)), float(match.group(2))) if match else (0, 0.0)


def _random_model(directory: Path, size: int) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "bench"}))
    with open(directory / "model.safetensors", "wb") as handle:
        for start in range(0, size, 64 << 20):
            handle.write(os.urandom(min(64 << 20, size - start)))
    return directory


def _on_host(host: testhosts.TestHost, command: str) -> None:
    subprocess.run(["docker", "exec", host.container, "sh", "-c", command], check=True)


def _log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
