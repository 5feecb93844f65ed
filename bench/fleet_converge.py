"""No-op converge of the full site on 1, 3 and 6 test hosts, side by side; then a rolling update.

Starts 6 disposable test hosts as a fleet (h1 and h2 gateways, all six serving the model), deploys
the site to all of them once, then times no-op converges (nothing to change) of 1, 3 and 6 hosts,
interleaved round by round so that machine noise hits all three alike; reports medians and the
6-vs-1 ratio (target <= 1.5). Last, one runtime setting changes and `deepfleet rollout --batch 1`
updates the six replicas (drain, converge, health + smoke completion, undrain): seconds per host.

    .venv/bin/python bench/fleet_converge.py [--rounds 5]

Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepfleet import testhosts  # noqa: E402
from deepfleet.apikeys import create_key  # noqa: E402
from deepfleet.demo import MODEL_NAME, PORT_SETTINGS, ensure_tiny_model, write_local_inventory  # noqa: E402
from deepfleet.deployrun import run_deploy  # noqa: E402
from deepfleet.fleet import describe_fleet  # noqa: E402
from deepfleet.modelkeys import create_model_keys  # noqa: E402
from deepfleet.paths import LOCAL_INVENTORY, cache_dir  # noqa: E402
from deepfleet.pki import init_ca  # noqa: E402
from deepfleet.rollout import Rollout  # noqa: E402

HOSTS = ("h1", "h2", "h3", "h4", "h5", "h6")
GROUPS = {"gateways": ["h1", "h2"], "gpu_nodes": list(HOSTS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deepfleet-bench-") as scratch:
        root = Path(scratch)
        fleet = testhosts.TestFleet(root / "hosts")
        try:
            fleet.start(6, testhosts.ensure_image(cache_dir() / "testhost"), PORT_SETTINGS)
            init_ca(root / "pki")
            create_key(root / "keys.json", "bench")
            create_model_keys(root / "model-keys")
            model = ensure_tiny_model(cache_dir() / "models" / MODEL_NAME)
            settings = {"model_keys_dir": str(root / "model-keys")}
            write_local_inventory(root / "inventory.json", fleet, model, root / "pki", root / "keys.json", GROUPS,
                                  **settings)
            env = {"DEEPFLEET_HOSTS_FILE": str(root / "inventory.json")}
            started = time.monotonic()
            first = run_deploy(LOCAL_INVENTORY, env=env, echo=False)
            cold_s = time.monotonic() - started
            print(f"cold deploy of 6 hosts: {cold_s:.1f} s, {first.changed} changes", file=sys.stderr)
            sizes = {1: ("h1",), 3: ("h1", "h2", "h3"), 6: ()}
            timings: dict[int, list[float]] = {n: [] for n in sizes}
            for round_number in range(args.rounds):
                for count, limit in sizes.items():
                    started = time.monotonic()
                    result = run_deploy(LOCAL_INVENTORY, env=env, limit=limit, echo=False)
                    elapsed = time.monotonic() - started
                    if result.changed:
                        raise SystemExit(f"not a no-op: {result.changed_operations}")
                    timings[count].append(elapsed)
                    print(f"round {round_number + 1}: {count} host(s) {elapsed:.2f} s", file=sys.stderr)
            # A new runtime config on every replica, rolled out one host at a time.
            write_local_inventory(root / "inventory.json", fleet, model, root / "pki", root / "keys.json", GROUPS,
                                  **settings, runtime_max_batch_size=9)
            report = Rollout(describe_fleet(LOCAL_INVENTORY, env), "1", log=lambda line: print(line, file=sys.stderr)).run()
            updated = [host for host in report.hosts if host.outcome == "updated"]
            if report.failure or len(updated) != len(HOSTS):
                raise SystemExit(f"the rollout did not update every host: {report.as_dict()}")
        finally:
            fleet.destroy()
    medians = {count: statistics.median(values) for count, values in timings.items()}
    figures = {
        "noop_1_s": round(medians[1], 2),
        "noop_3_s": round(medians[3], 2),
        "noop_6_s": round(medians[6], 2),
        "noop_6_vs_1": round(medians[6] / medians[1], 2),
        "cold_6_s": round(cold_s, 1),
        "rollout_6_s": round(report.seconds, 1),
        "rollout_per_host_s": round(report.seconds / len(updated), 1),
        "rounds": args.rounds,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
