"""The alert rules pass promtool's checks, and every alert fires in promtool's unit tests
(monitoring/alerts.test.yml) on synthetic series where its condition holds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "alerts.rules.yml"
UNIT_TESTS = MONITORING / "alerts.test.yml"


def _alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_rules_pass_promtool_check(promtool):
    result = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in result.stdout


def test_every_alert_fires_in_a_unit_test():
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert _alert_names() - fired == set(), "alerts without a promtool unit test that makes them fire"


def test_unit_tests_pass(promtool):
    result = subprocess.run([str(promtool), "test", "rules", UNIT_TESTS.name], cwd=MONITORING,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_expectation_fails(promtool, tmp_path):
    """The unit tests can fail: the same file, expecting the KV-cache alert a minute too early, does."""
    text = UNIT_TESTS.read_text().replace("{eval_time: 9m, alertname: DeepfleetKvCacheNearlyFull, exp_alerts: []}",
                                          "{eval_time: 11m, alertname: DeepfleetKvCacheNearlyFull, exp_alerts: []}")
    assert text != UNIT_TESTS.read_text()
    (tmp_path / RULES.name).write_text(RULES.read_text())
    (tmp_path / UNIT_TESTS.name).write_text(text)
    result = subprocess.run([str(promtool), "test", "rules", UNIT_TESTS.name], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0


def test_monitoring_alert_for_replaces_the_for_of_the_alerts_it_names_and_promtool_accepts_it(promtool, tmp_path):
    from roles.monitoring import alert_rules

    assert alert_rules({}) == RULES.read_text()  # nothing named: the shipped file as it is
    rendered = tmp_path / "rules.yml"
    rendered.write_text(alert_rules({"DeepfleetCertificateExpiresSoon": "5s", "DeepfleetKeyServerErrors": "1h30m"}))
    result = subprocess.run([str(promtool), "check", "rules", str(rendered)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"]
               for rule in group["rules"] if "alert" in rule}
    ours = {rule["alert"]: rule for group in yaml.safe_load(rendered.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule}
    assert ours["DeepfleetCertificateExpiresSoon"]["for"] == "5s"
    assert ours["DeepfleetKeyServerErrors"]["for"] == "1h30m"
    untouched = set(shipped) - {"DeepfleetCertificateExpiresSoon", "DeepfleetKeyServerErrors"}
    assert {name: ours[name] for name in untouched} == {name: shipped[name] for name in untouched}
    assert ours["DeepfleetCertificateExpiresSoon"]["expr"] == shipped["DeepfleetCertificateExpiresSoon"]["expr"]


def test_monitoring_alert_for_refuses_an_unknown_alert_and_a_bad_duration_naming_the_fix():
    import pytest

    from roles.common import RoleError
    from roles.monitoring import alert_rules

    with pytest.raises(RoleError, match="DeepfleetNoSuchAlert.*known: .*DeepfleetReplicaDown"):
        alert_rules({"DeepfleetNoSuchAlert": "5m"})
    with pytest.raises(RoleError, match="DeepfleetReplicaDown: '5 minutes' is not a Prometheus duration"):
        alert_rules({"DeepfleetReplicaDown": "5 minutes"})
