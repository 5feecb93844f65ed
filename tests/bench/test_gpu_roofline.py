"""bench/gpu_roofline.py is prepared for a GPU; here its logic runs on CPU with a tiny shape."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "gpu_roofline.py"


@pytest.fixture(scope="module")
def roofline():
    spec = importlib.util.spec_from_file_location("gpu_roofline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expected_experts_touched_by_a_batch(roofline):
    assert roofline.expected_distinct_experts(64, 6, 1) == pytest.approx(6)
    assert 6 < roofline.expected_distinct_experts(64, 6, 32) < 64
    assert roofline.expected_distinct_experts(64, 6, 4096) == pytest.approx(64)


def test_a_tiny_cpu_run_prints_rates_and_rooflines(roofline, capsys):
    roofline.main(["--device", "cpu", "--shape", "tiny", "--modes", "bf16,int8", "--batches", "1,2",
                   "--new-tokens", "4", "--prompt-tokens", "8", "--bandwidth", "1e10"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["mode"], r["batch"]) for r in result["results"]] == [("bf16", 1), ("bf16", 2), ("int8", 1), ("int8", 2)]
    bf16, int8 = result["results"][0], result["results"][2]
    assert bf16["tok_per_s"] > 0 and bf16["roofline_tok_per_s"] > 0
    assert int8["weight_gb"] < bf16["weight_gb"]  # int8 weights are read from fewer bytes
    assert int8["roofline_tok_per_s"] > bf16["roofline_tok_per_s"]
