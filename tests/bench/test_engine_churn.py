"""bench/engine_churn.py in a tiny configuration: this tree's engine and the previous one (imported
from git) on the same weights, the last line one JSON object with the ratios and greedy equality."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "engine_churn.py"
SHALLOW = subprocess.run(["git", "-C", str(SCRIPT.parent), "rev-parse", "--is-shallow-repository"],
                         capture_output=True, text=True).stdout.strip() != "false"
pytestmark = pytest.mark.skipif(SHALLOW, reason="the baseline engine comes from git history; this clone has none "
                                                "(clone without --depth)")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("engine_churn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_baseline_is_the_previous_engine_from_git(bench, tmp_path):
    engine_class, scheduler_class = bench.import_baseline(bench.default_baseline_rev(), tmp_path)
    assert engine_class.__module__ == f"{bench.BASELINE_PACKAGE}.engines.transformers_engine"
    assert scheduler_class().max_batch_size == 32
    source = (tmp_path / bench.PACKAGE / "engines" / "transformers_engine.py").read_text()
    assert "PaddedBatch" in source and "SlotCache" not in source


def test_a_baseline_without_the_old_engine_is_refused_naming_the_option(bench, tmp_path):
    with pytest.raises(SystemExit, match="--baseline-rev HEAD has no .*padded_batch.py"):
        bench.import_baseline("HEAD", tmp_path)


def test_a_tiny_run_prints_both_engines_ratios_and_greedy_equality(bench, capsys):
    bench.main(["--churn", "3", "--gap-ms", "10", "--uniform", "2", "--tokens", "4", "--repeats", "1"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["greedy_equal_to_hf"] == {"candidate": True, "baseline": True}
    assert set(result["tok_per_s"]) == {"candidate_churn", "baseline_churn", "hf_static_uniform",
                                        "candidate_uniform", "baseline_uniform"}
    assert all(rate > 0 for rate in result["tok_per_s"].values())
    for ratio in ("churn_candidate_vs_baseline", "uniform_candidate_vs_hf_static", "uniform_candidate_vs_baseline"):
        assert result[ratio] > 0
    assert result["churn_prompt_tokens"] >= 3 * 16 and result["baseline_rev"]
