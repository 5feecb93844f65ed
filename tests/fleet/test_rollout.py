"""A fleet of four real test hosts: h1-h3 serve the model (replicas on other hosts over mutual TLS),
h1 and h2 are gateways too, h4 is a gateway only. `deepfleet plan` / `up` across the fleet, then rolling updates from model
release v1 to v2 under constant load (four streaming openai clients, two per gateway): one with a
fault on h2 (its v2 cannot load), then the same command again once the fault is gone (resume).
Then what an operator relies on: an interrupt puts the batch back while a second rollout is refused
naming the lock; a canary answering 5xx in its bake is rolled back; a ramp pauses and resumes;
`rollback --rollout ID` moves back only what that rollout moved; a gateway change rolls the gateways
one at a time under clients that fail over, the gateway-only host in a batch of its own after the
replicas. One fleet for all (each host costs CI time).

The hosts share this machine's network, so every host has its own ports (deepfleet.demo.PORT_SETTINGS).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deepfleet import testhosts
from deepfleet.apikeys import create_key
from deepfleet.demo import MODEL_NAME, PORT_SETTINGS
from deepfleet.deployrun import run_deploy
from deepfleet.modelkeys import create_model_keys
from deepfleet.paths import LOCAL_INVENTORY, cache_dir
from deepfleet.pki import init_ca
from deepfleet_runtime.tinymodel import build_tiny_model
from tests.fleet.rolloutfleet import FAULT, RUNTIME, FailoverLoad, Fleet, Load, greedy

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("fleet")
    image = testhosts.ensure_image(cache_dir() / "testhost")
    hosts = testhosts.TestFleet(root / "hosts")
    try:
        hosts.start(4, image, PORT_SETTINGS)
        ca, _ = init_ca(root / "pki")
        key = create_key(root / "keys.json", "fleet-tests", rpm=0, tpm=0, concurrency=0)
        create_model_keys(root / "model-keys")
        shutil.copytree(tiny_model_dir, root / "model-v1")
        fleet = Fleet(hosts, root, ca.cert, key, root / "inventory.json")
        fleet.write_inventory()
        started = time.monotonic()
        first = run_deploy(LOCAL_INVENTORY, env={"DEEPFLEET_HOSTS_FILE": str(fleet.inventory)}, echo=False)
        fleet.timings["first_deploy_4_hosts_s"] = round(time.monotonic() - started, 1)
        assert first.failed_hosts == []
        yield fleet
    finally:
        print(f"\nfleet timings: {json.dumps(fleet.timings) if 'fleet' in locals() else '-'}")
        hosts.destroy()


@pytest.fixture(scope="module")
def answers(fleet):
    """The greedy answers of model v1 and v2 to PROMPT, from transformers on this machine."""
    build_tiny_model(fleet.root / "model-v2", seed=1)
    broken = fleet.root / "model-v2-broken"  # same weights, a config they do not fit: it cannot load
    shutil.copytree(fleet.root / "model-v2", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config | {"hidden_size": 128}))
    return {version: greedy(fleet.root / f"model-{version}") for version in ("v1", "v2")}


def test_plan_shows_one_template_change_on_every_host_and_nothing_else_then_up_converges(fleet):
    converged = fleet.deepfleet("plan")
    assert (converged.returncode, converged.stdout.strip()) == (0, "No changes: the hosts are converged."), \
        converged.stdout + converged.stderr[-2000:]
    fleet.overrides["runtime_max_batch_size"] = 9
    fleet.write_inventory()
    plan = fleet.deepfleet("plan")
    assert plan.returncode == 2, plan.stderr[-2000:]
    would_change = plan.stdout.split("Operations that run only if")[0].strip().splitlines()[1:]
    assert would_change == ["  deepfleet runtime | Runtime config  [h1, h2, h3]",
                            "  deepfleet runtime | Runtime release (model + runtime + config)  [h1, h2, h3]"]
    diff = plan.stdout.split("Diffs:")[1]
    assert sorted(line for line in diff.splitlines() if line.startswith("---")) == [
        f"--- [{host}] /etc/deepfleet/runtime.yaml" for host in ("h1", "h2", "h3")]  # in the order hosts answered
    changed = [line.split() for line in diff.splitlines() if line.lstrip().startswith(("+ ", "- "))]
    assert changed == [["-", "max_batch_size:", "32"], ["+", "max_batch_size:", "9"]] * 3

    before = {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")}
    up = fleet.deepfleet("up")
    assert up.returncode == 0, up.stderr[-2000:]
    assert "on 3 host(s): h1, h2, h3" in up.stdout
    plan = fleet.deepfleet("plan")
    assert plan.returncode == 0, plan.stdout + fleet.on("h2", "ls -la /opt/deepfleet/models; cat /opt/deepfleet/models/.*.json "
                                                        "/opt/deepfleet/models/*.json 2>/dev/null; true")
    for host in ("h1", "h2", "h3"):
        release = fleet.release(host)
        assert release["id"] != before[host] and "max_batch_size: 9" in fleet.on(
            host, "cat /opt/deepfleet/releases/current/runtime.yaml")
        kept = fleet.on(host, "ls /opt/deepfleet/releases").split()
        assert before[host] in kept and "current" in kept  # the previous release stays for rollback


def test_rollout_with_a_fault_on_h2_puts_it_back_leaves_h3_alone_and_fails_no_client(fleet, answers):
    v1 = {host: fleet.release(host) for host in ("h1", "h2", "h3")}
    h3_pid = fleet.runtime_pid("h3")
    fleet.write_inventory({host: {"model_source": str(fleet.root / "model-v2")} for host in ("h1", "h3")}
                          | {"h2": {"model_source": str(fleet.root / "model-v2-broken")}})
    started = time.monotonic()
    with Load(fleet) as load:
        rollout = fleet.deepfleet("rollout", "--batch", "1")
        time.sleep(2)  # the load goes on after the rollout stopped
    fleet.timings["rollout_with_fault_s"] = round(time.monotonic() - started, 1)
    assert rollout.returncode == 1, rollout.stdout + rollout.stderr[-3000:]
    assert "h2 failed at converge" in rollout.stdout and "will not become ready" in rollout.stdout
    assert "size mismatch" in rollout.stdout or "mismatch" in rollout.stdout  # the reason: why it cannot load
    assert load.failures == [] and load.done > 0

    assert fleet.release("h1")["model"]["release"] != v1["h1"]["model"]["release"]  # h1 (batch 1) is on v2
    assert fleet.release("h2")["id"] == v1["h2"]["id"]  # back on v1 ...
    assert fleet.release("h3") == v1["h3"] and fleet.runtime_pid("h3") == h3_pid  # not reached: untouched
    for gateway in ("h1", "h2", "h4"):
        assert fleet.probe(gateway, "h1") == answers["v2"]
        assert fleet.probe(gateway, "h2") == answers["v1"]  # ... and serving it
        assert fleet.probe(gateway, "h3") == answers["v1"]
        status = json.loads(fleet.on(gateway, f"{RUNTIME} gateway-admin status"))["upstreams"]
        assert [(u["name"], u["healthy"], u["draining"]) for u in status] == [
            ("h1", True, False), ("h2", True, False), ("h3", True, False)]


def test_the_same_rollout_resumes_once_fixed_and_moves_every_host_to_v2(fleet, answers):
    fleet.write_inventory({host: {"model_source": str(fleet.root / "model-v2")} for host in ("h1", "h2", "h3")})
    started = time.monotonic()
    with Load(fleet) as load:
        rollout = fleet.deepfleet("rollout", "--batch", "1")
        time.sleep(2)
    fleet.timings["rollout_2_hosts_s"] = round(time.monotonic() - started, 1)
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr[-3000:]
    report = json.loads((fleet.root / "state" / "rollouts" / "local.json").read_text())
    assert [(h["name"], h["outcome"], h["batch"]) for h in report["hosts"]] == [
        ("h1", "up to date", 0), ("h2", "updated", 1), ("h3", "updated", 2),  # resumed where it stopped
        ("h4", "up to date", 0)]  # a gateway only: nothing of it changes with the model
    assert "deepfleet rollout" in rollout.stdout  # the summary table
    assert load.failures == [] and load.done > 0
    assert len({fleet.release(host)["model"]["release"] for host in ("h1", "h2", "h3")}) == 1
    for gateway in ("h1", "h2", "h4"):
        assert [fleet.probe(gateway, host) for host in ("h1", "h2", "h3")] == [answers["v2"]] * 3
    plan = fleet.deepfleet("plan")
    assert plan.returncode == 0, plan.stdout + fleet.on("h2", "ls -la /opt/deepfleet/models; cat /opt/deepfleet/models/.*.json "
                                                        "/opt/deepfleet/models/*.json 2>/dev/null; true")


def test_status_shows_every_host_on_its_release_and_healthy(fleet):
    status = fleet.deepfleet("status", "--json", timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr[-2000:]
    hosts = {record["name"]: record for record in map(json.loads, status.stdout.splitlines())}
    assert list(hosts) == ["h1", "h2", "h3", "h4"]
    for name in ("h1", "h2", "h3"):
        record = hosts[name]
        assert record["healthy"] and record["release"] == fleet.release(name)
        assert record["units"]["deepfleet-runtime"] == "active" and record["gpus"] is None  # no NVIDIA GPU here
        assert {gateway: (state["healthy"], state["draining"]) for gateway, state in record["at_gateways"].items()} \
            == {"h1": (True, False), "h2": (True, False), "h4": (True, False)}
    assert hosts["h4"]["healthy"] and hosts["h4"]["release"] is None and hosts["h4"]["at_gateways"] == {}
    assert hosts["h4"]["units"]["deepfleet-gateway"] == "active"
    assert [hosts[name]["jobs"] for name in hosts] == [["gateway", "replica"], ["gateway", "replica"], ["replica"],
                                                      ["gateway"]]
    table = fleet.deepfleet("status", timeout=300)
    assert table.returncode == 0 and "h1 ok, h2 ok, h4 ok" in table.stdout


# --- operations an operator can trust: interrupts, locks, bake gate, ramps, resume, undo ------------

ALL_SERVING = [("h1", True, False), ("h2", True, False), ("h3", True, False)]


def _on_v2(fleet: Fleet, batch_size: int, groups: dict | None = None) -> None:
    """A config change on every replica (their model stays v2): a restart, no model push."""
    fleet.overrides["runtime_max_batch_size"] = batch_size
    fleet.write_inventory({host: {"model_source": str(fleet.root / "model-v2")} for host in ("h1", "h2", "h3")},
                          groups)


def _wait_for(progress: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in progress.read_text():
        assert process.poll() is None, f"it ended before {text!r}: {progress.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in: {progress.read_text()[-3000:]}"
        time.sleep(0.2)


def _record(fleet: Fleet) -> dict:
    return json.loads((fleet.root / "state" / "rollouts" / "local.json").read_text())


def test_an_interrupted_rollout_puts_its_batch_back_and_meanwhile_another_is_refused_naming_the_lock(fleet, answers):
    before = {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")}
    _on_v2(fleet, 10)
    started = time.monotonic()
    with Load(fleet) as load:
        first, progress = fleet.start("rollout", "--batch", "1")
        _wait_for(progress, "converging h1", first)
        second = fleet.deepfleet("rollout", "--batch", "1")
        up = fleet.deepfleet("up")
        assert first.poll() is None, progress.read_text()[-3000:]  # both refused while the first ran
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=600)
        time.sleep(2)
    fleet.timings["interrupted_rollout_s"] = round(time.monotonic() - started, 1)
    lock_id = _record(fleet)["id"]
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"h1 is locked by rollout {lock_id} by " in second.stderr and "taken " in second.stderr \
        and f"deepfleet unlock {LOCAL_INVENTORY} --lock {lock_id}" in second.stderr
    assert up.returncode == 1 and f"is locked by rollout {lock_id}" in up.stderr, up.stderr[-3000:]
    assert first.returncode == 130, out + progress.read_text()[-3000:]
    assert "interrupted" in out and "--resume" in out
    record = _record(fleet)
    assert record["status"] == "interrupted"
    assert [(h["name"], h["outcome"]) for h in record["hosts"]] == [
        ("h1", "rolled back"), ("h2", "not reached"), ("h3", "not reached"), ("h4", "up to date")]
    assert load.failures == [] and load.done > 0
    assert {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")} == before
    for gateway in ("h1", "h2", "h4"):
        assert fleet.upstreams(gateway) == ALL_SERVING  # no replica left drained
    locks = fleet.deepfleet("locks")
    assert locks.returncode == 0 and locks.stdout.count("not locked") == 4, locks.stdout


def test_a_canary_answering_5xx_during_its_bake_is_rolled_back_and_the_rollout_stops(fleet, answers):
    before = {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")}
    pids = {host: fleet.runtime_pid(host) for host in ("h2", "h3")}
    _on_v2(fleet, 11)
    started = time.monotonic()
    with Load(fleet) as load:
        rollout, progress = fleet.start("rollout", "--batch", "1", "--bake", "20")
        _wait_for(progress, "baking h1", rollout)
        # h1 passed its verify and smoke test on the new release; now it answers 500 to every completion
        # (and 200 to health checks, as a replica broken under real traffic does)
        state = next(u for u in json.loads(fleet.on("h1", f"{RUNTIME} gateway-admin status"))["upstreams"]
                     if u["name"] == "h1")
        labels = json.dumps({"model": MODEL_NAME, "release": state["release"], "quantization": state["quantization"]})
        fleet.on("h1", f"cat > /tmp/fault.py <<'EOF'\n{FAULT}\nEOF\n")
        fleet.on("h1", "systemctl stop deepfleet-runtime && systemd-run --unit deepfleet-fault "
                       f"/opt/deepfleet/venv/bin/python /tmp/fault.py '{labels}'")
        _wait_for(progress, "h1 failed at bake", rollout)
        fleet.on("h1", "systemctl stop deepfleet-fault")  # the rollback's restart needs the port
        out, _ = rollout.communicate(timeout=600)
        time.sleep(2)
    fleet.timings["canary_bake_rollback_s"] = round(time.monotonic() - started, 1)
    assert rollout.returncode == 1, out + progress.read_text()[-3000:]
    assert "h1 failed at bake" in out and "requests failed" in out, out
    record = _record(fleet)
    assert record["status"] == "halted"
    assert [(h["name"], h["outcome"]) for h in record["hosts"]] == [
        ("h1", "failed"), ("h2", "not reached"), ("h3", "not reached"), ("h4", "up to date")]
    assert load.failures == [] and load.done > 0  # the gateways sent its failed requests elsewhere
    assert {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")} == before
    assert {host: fleet.runtime_pid(host) for host in ("h2", "h3")} == pids
    for gateway in ("h1", "h2", "h4"):
        assert fleet.upstreams(gateway) == ALL_SERVING


def test_a_ramp_refuses_a_capacity_it_cannot_keep_then_pauses_and_resumes_with_no_failed_request(fleet, answers):
    _on_v2(fleet, 12)
    refused = fleet.deepfleet("rollout", "--min-serving", "3")
    assert refused.returncode == 2 and "fewer than --min-serving 3" in refused.stderr, refused.stderr[-3000:]
    before = {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")}
    started = time.monotonic()
    with Load(fleet) as load:
        paused = fleet.deepfleet("rollout", "--batch", "1,50%", "--pause-after", "1")
        after_pause = {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")}
        resumed = fleet.deepfleet("rollout", "--resume")
        time.sleep(2)
    fleet.timings["ramp_pause_resume_3_hosts_s"] = round(time.monotonic() - started, 1)
    assert paused.returncode == 0 and "paused after batch 1" in paused.stdout, paused.stdout + paused.stderr[-3000:]
    assert after_pause["h1"] != before["h1"] and [after_pause[h] for h in ("h2", "h3")] == [before["h2"], before["h3"]]
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    record = _record(fleet)
    assert record["status"] == "done"
    assert [(h["name"], h["outcome"], h["batch"], h["before"]) for h in record["hosts"]] == [
        ("h1", "updated", 1, before["h1"]), ("h2", "updated", 2, before["h2"]), ("h3", "updated", 2, before["h3"]),
        ("h4", "up to date", 0, None)]
    assert load.failures == [] and load.done > 0


def test_rollback_of_a_rollout_moves_back_only_the_hosts_it_moved(fleet, answers):
    _on_v2(fleet, 13)
    before = {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")}
    moved = fleet.deepfleet("rollout", "--batch", "1", "--pause-after", "1")
    assert moved.returncode == 0, moved.stdout + moved.stderr[-3000:]
    rollout_id = _record(fleet)["id"]
    assert fleet.release("h1")["id"] != before["h1"]
    pids = {host: fleet.runtime_pid(host) for host in ("h2", "h3")}
    started = time.monotonic()
    with Load(fleet) as load:
        back = fleet.deepfleet("rollback", "--rollout", rollout_id)
        time.sleep(2)
    fleet.timings["rollback_of_rollout_s"] = round(time.monotonic() - started, 1)
    assert back.returncode == 0, back.stdout + back.stderr[-3000:]
    assert "drained h1 at h1, h2, h4" in back.stderr and "undrained h1" in back.stderr
    assert {host: fleet.release(host)["id"] for host in ("h1", "h2", "h3")} == before
    assert {host: fleet.runtime_pid(host) for host in ("h2", "h3")} == pids  # untouched
    record = _record(fleet)
    assert (record["kind"], record["of"]) == ("rollback", rollout_id)
    assert [(h["name"], h["outcome"]) for h in record["hosts"]] == [
        ("h1", "updated"), ("h2", "up to date"), ("h3", "up to date")]
    assert load.failures == [] and load.done > 0
    for gateway in ("h1", "h2", "h4"):
        assert fleet.upstreams(gateway) == ALL_SERVING


def test_a_gateway_change_restarts_the_gateways_one_at_a_time_and_failover_clients_see_no_failure(fleet, answers):
    gateways = ("h1", "h2", "h4")
    pids = {gateway: fleet.on(gateway, "systemctl show -p MainPID --value deepfleet-gateway").strip()
            for gateway in gateways}
    fleet.overrides["gateway_max_queued"] = 300
    # Without h4 the gateways are h1 and h2 only: a batch of both leaves clients none (refused; nothing
    # changes, so h4 keeps serving).
    _on_v2(fleet, 12, groups={"gateways": ["h1", "h2"], "gpu_nodes": ["h1", "h2", "h3"]})
    refused = fleet.deepfleet("rollout", "--batch", "2")
    assert refused.returncode == 2 and "holds every gateway (h1, h2)" in refused.stderr, refused.stderr[-3000:]
    _on_v2(fleet, 12)  # what the rollback left them serving: only the gateways change
    started = time.monotonic()
    with FailoverLoad(fleet) as load:
        rollout = fleet.deepfleet("rollout", "--batch", "1")
        time.sleep(2)
    fleet.timings["gateway_rollout_s"] = round(time.monotonic() - started, 1)
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr[-3000:]
    assert [(h["name"], h["outcome"], h["batch"]) for h in _record(fleet)["hosts"]] == [
        ("h1", "unchanged", 1), ("h2", "unchanged", 2), ("h3", "up to date", 0),  # the gateways' config only
        ("h4", "updated", 3)]  # the gateway-only host: alone, after the replicas, h1 and h2 serving
    assert "batch 3: gateway h4" in rollout.stderr and "h4: the other gateways (h1, h2) serve" in rollout.stderr
    assert "h4: sees every serving replica and answered a smoke completion" in rollout.stderr
    for gateway in gateways:
        assert fleet.on(gateway, "systemctl show -p MainPID --value deepfleet-gateway").strip() != pids[gateway]
        assert "max_queued: 300" in fleet.on(gateway, "cat /etc/deepfleet/gateway.yaml")
        assert fleet.upstreams(gateway) == ALL_SERVING
    assert load.failures == [] and load.done > 0
