"""The decisions of `deepfleet rollout` without hosts: batch plans, failure budgets, capacity,
the bake gate and lock staleness (deepfleet/rolloutplan.py)."""

import pytest

from deepfleet.rolloutplan import (BakeSample, RolloutRefused, bake_verdict, budget_exhausted, check_gateways_kept,
                                   check_min_serving,
                                   lock_description, plan_batches)

NAMES = [f"g{i}" for i in range(1, 21)]


def test_a_ramp_takes_each_step_of_all_replicas_and_repeats_the_last():
    batches = plan_batches("1,10%,50%", NAMES, replicas=20)
    assert [len(b) for b in batches] == [1, 2, 10, 7]
    assert [name for b in batches for name in b] == NAMES  # every pending replica once, in order


def test_a_single_size_is_the_old_fixed_batch():
    assert plan_batches("2", ["a", "b", "c"], replicas=4) == [["a", "b"], ["c"]]
    assert plan_batches("25%", ["a", "b", "c"], replicas=4) == [["a"], ["b"], ["c"]]


def test_a_resumed_ramp_goes_on_from_the_batch_it_reached():
    assert plan_batches("1,50%", ["b", "c"], replicas=3, first=2) == [["b", "c"]]


@pytest.mark.parametrize("spec, words", [("x", "a number of hosts"), ("0", "less than one host"),
                                         ("1,,2", "a number of hosts"), ("1,3", "all 3 replicas")])
def test_bad_batch_specs_are_refused_saying_how_to_write_them(spec, words):
    with pytest.raises(RolloutRefused, match=words):
        plan_batches(spec, ["a", "b", "c"], replicas=3)


def test_the_failure_budget_counts_batches_or_a_share_of_the_replicas():
    assert not budget_exhausted(failed_hosts=0, failed_batches=0, hosts=10, max_failures=0, max_fail_percent=None)
    assert budget_exhausted(failed_hosts=1, failed_batches=1, hosts=10, max_failures=0, max_fail_percent=None)
    assert not budget_exhausted(failed_hosts=1, failed_batches=1, hosts=10, max_failures=0, max_fail_percent=10)
    assert budget_exhausted(failed_hosts=2, failed_batches=2, hosts=10, max_failures=5, max_fail_percent=10)


def test_min_serving_is_kept_per_model_or_the_rollout_refuses_saying_which_batch_and_model():
    models = {"r1": "a", "r2": "a", "r3": "a", "b1": "b", "b2": "b", "b3": "b"}
    check_min_serving([["r1"], ["b1"], ["r2", "r3"]], models, serving=set(models), min_serving=1)
    with pytest.raises(RolloutRefused, match=r"batch 3 \(r2, r3\) would leave model a with 1 serving replica.*"
                                             r"--min-serving 2"):
        check_min_serving([["r1"], ["b1"], ["r2", "r3"]], models, serving=set(models), min_serving=2)
    with pytest.raises(RolloutRefused, match=r"batch 1 \(b2\) would leave model b with 0 serving.*b1 is not serving"):
        check_min_serving([["b2"]], {"r1": "a", "b1": "b", "b2": "b"}, serving={"r1", "b2"}, min_serving=1)


def _sample(served, failed, seconds=0.0, healthy=True):
    return BakeSample(served=served, failed=failed, answer_seconds=seconds, healthy=healthy)


def test_the_bake_gate_passes_a_replica_that_answers_like_the_others():
    assert bake_verdict(_sample(40, 0, 8.0), _sample(80, 0, 16.0)) is None


def test_the_bake_gate_fails_a_replica_that_answers_5xx_while_the_others_do_not():
    reason = bake_verdict(_sample(30, 6, 6.0), _sample(80, 0, 16.0))
    assert reason and "6 of 36 requests failed (17%)" in reason and "others: 0 of 80" in reason


def test_the_bake_gate_fails_a_replica_much_slower_than_the_others():
    reason = bake_verdict(_sample(40, 0, 40.0), _sample(80, 0, 16.0), latency_factor=2.0)
    assert reason and "1.00 s per answer" in reason and "others 0.20 s" in reason


def test_the_bake_gate_fails_a_replica_that_went_unhealthy_and_ignores_too_few_requests():
    assert "unhealthy" in bake_verdict(_sample(40, 0, 8.0, healthy=False), _sample(80, 0, 16.0))
    assert bake_verdict(_sample(2, 1, 0.4), _sample(80, 0, 16.0), min_requests=5) is None


def test_a_replica_that_failed_requests_and_went_unhealthy_is_reported_by_its_failed_requests():
    reason = bake_verdict(_sample(10, 20, 2.0, healthy=False), _sample(80, 0, 16.0))
    assert reason.startswith("20 of 30 requests failed")


def test_a_lock_names_its_owner_and_age_and_is_stale_only_when_its_process_is_gone():
    lock = {"id": "r-1", "operation": "rollout", "owner": "ci@ctl", "machine": "ctl", "pid": 42, "since": 1000.0}
    text, stale = lock_description(lock, now=1000.0 + 185, machine="ctl", pid_alive=lambda pid: True)
    assert (text, stale) == ("rollout r-1 by ci@ctl (pid 42 on ctl), taken 3 min ago", False)
    _, stale = lock_description(lock, now=1185.0, machine="ctl", pid_alive=lambda pid: False)
    assert stale
    _, stale = lock_description(lock, now=1185.0, machine="other", pid_alive=lambda pid: False)
    assert not stale  # another machine's process cannot be checked from here


def test_a_batch_that_holds_every_gateway_is_refused_since_clients_would_have_none_while_it_converges():
    check_gateways_kept([["h1"], ["h2", "h3"]], gateways=["h1", "h2"])
    with pytest.raises(RolloutRefused, match=r"batch 2 \(h1, h2\) holds every gateway \(h1, h2\).*--batch 1"):
        check_gateways_kept([["h3"], ["h1", "h2"]], gateways=["h1", "h2"])
