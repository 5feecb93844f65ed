"""bench/engines_side_by_side.py in a tiny configuration: every engine behind the runtime's real
server, the real openai SDK, the last line one JSON object. vLLM runs when its cached venv exists
(tests/conftest.py vllm_python builds it); otherwise its row is skipped, and the output and a
warning say so."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "engines_side_by_side.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("engines_side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_percentiles_interpolate_between_ranks(bench):
    assert bench.percentile([1.0], 0.99) == 1.0
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert bench.percentile([float(i) for i in range(101)], 0.99) == pytest.approx(99.0)


def test_a_missing_vllm_venv_skips_its_row_and_says_why(bench, capsys):
    bench.main(["--engines", "vllm", "--vllm-python", "/nonexistent/python", "--uniform", "1", "--tokens", "2",
                "--mixed", "0", "--repeats", "1"])
    result = last_json(capsys)
    assert result["engines"] == {} and result["tok_per_s_vs_vllm"] == {}
    assert "/nonexistent/python does not exist" in result["skipped"]["vllm"]


def test_an_unknown_engine_is_refused_naming_the_choices(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--engines", "builtin,tgi"])
    assert "unknown engine(s) tgi; choose from vllm, builtin, llamacpp" in capsys.readouterr().err


def test_a_tiny_run_serves_every_engine_and_prints_rates_ttfts_and_ratios(bench, capsys):
    vllm_python, why = bench.find_vllm_python("")
    if why:
        warnings.warn(f"the vLLM row is skipped: {why}")
    bench.main(["--uniform", "2", "--tokens", "4", "--mixed", "3", "--gap-ms", "20", "--repeats", "1"])
    result = last_json(capsys)
    assert set(result["engines"]) | set(result["skipped"]) == {"vllm", "builtin", "llamacpp"}
    assert "builtin" in result["engines"] and result["vocab"] == 129280  # R1's real vocabulary
    assert ("vllm" in result["engines"]) == (not why)
    for name, row in result["engines"].items():
        uniform, mixed = row["uniform"], row["mixed"]
        assert uniform["completion_tokens"] == 2 * 4 and uniform["full_length"], name  # ignore_eos held
        assert mixed["full_length"] and mixed["completion_tokens"] >= 3 * 16, name
        assert 0 < uniform["ttft_p50_s"] <= uniform["ttft_p99_s"] and uniform["tok_per_s"] > 0, name
        assert mixed["prompt_tokens_mean"] > uniform["prompt_tokens_mean"], name  # 16..2000-token prompts
    if not why:
        assert set(result["tok_per_s_vs_vllm"]) == set(result["engines"]) - {"vllm"}
        assert all(ratio > 0 for ratios in result["tok_per_s_vs_vllm"].values() for ratio in ratios.values())
