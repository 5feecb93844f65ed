"""The transformers engine under churn, against its previous implementation, side by side.

Issue 13 item 7: a step's cost must depend on the live tokens, not on how rows came and went. The
candidate is this tree's TransformersEngine (packed steps, a KV slot per row written in place);
the baseline is the engine as it was before (one left-padded DynamicCache: joins pad and
concatenate it, leaves copy it, prefill is rows x longest prompt), imported from git
(--baseline-rev, default: the last commit that had engines/padded_batch.py) under another package
name, so both run in this process on the same weights, one after the other, alternating.
Workloads (greedy, ignore_eos, so every request makes its full max_tokens), on the tiny DeepSeek-V3:
  churn    --churn requests (32) arriving with exponential gaps (mean --gap-ms), prompts of
           16..2000 tokens (log-uniform), max_tokens 16..128, so rows join and leave all the time
  uniform  --uniform requests (32) x --tokens (64), all at once; HF's static padded batch of all
           of them (one generate call) is the ceiling a batch forward allows
Each repeat runs baseline and candidate on churn, then HF static, candidate and baseline on
uniform (the order flips every repeat); the median of --repeats is reported. Greedy outputs of both
engines are compared with HF generate one request at a time (churn and uniform, first repeat).

Usage: .venv/bin/python bench/engine_churn.py [--repeats 3]
The last line is one JSON object: tok/s per engine and workload, the ratios, greedy equality.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "runtime")) if p not in sys.path]

from deepfleet.demo import MODEL_NAME, ensure_tiny_model  # noqa: E402
from deepfleet.paths import cache_dir  # noqa: E402
from deepfleet_runtime.config import SchedulerSection  # noqa: E402
from deepfleet_runtime.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from deepfleet_runtime.engines.transformers_engine import TransformersEngine  # noqa: E402

PACKAGE = "runtime/deepfleet_runtime"
REMOVED_WITH_THE_OLD_LAYOUT = f"{PACKAGE}/engines/padded_batch.py"
BASELINE_PACKAGE = "baseline_deepfleet_runtime"
WORDS = ("fleet model gateway host token cache batch request answer hospital key secure deploy "
         "release engine server quantum river window paper garden signal").split()


def default_baseline_rev() -> str:
    """The parent of the commit that removed padded_batch.py (the last tree with the old engine)."""
    removed = subprocess.run(["git", "-C", str(ROOT), "rev-list", "-1", "HEAD", "--", REMOVED_WITH_THE_OLD_LAYOUT],
                             check=True, capture_output=True, text=True).stdout.strip()
    if not removed:
        raise SystemExit(f"{REMOVED_WITH_THE_OLD_LAYOUT} was never in this history; pass --baseline-rev")
    return f"{removed}^"


def import_baseline(rev: str, scratch: Path):
    """The runtime package of git revision `rev`, imported as BASELINE_PACKAGE: (its engine class,
    its SchedulerSection)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, PACKAGE],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(scratch, filter="data")
    package = scratch / PACKAGE
    if not (package / "engines" / "padded_batch.py").exists():
        raise SystemExit(f"--baseline-rev {rev} has no {REMOVED_WITH_THE_OLD_LAYOUT}: not the previous engine")
    spec = importlib.util.spec_from_file_location(BASELINE_PACKAGE, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[BASELINE_PACKAGE] = module
    spec.loader.exec_module(module)
    engine = importlib.import_module(f"{BASELINE_PACKAGE}.engines.transformers_engine")
    config = importlib.import_module(f"{BASELINE_PACKAGE}.config")
    return engine.TransformersEngine, config.SchedulerSection


def prompt_ids(tokenizer, rng: random.Random, tokens: int) -> list[int]:
    """Exactly `tokens` prompt ids of random words."""
    ids = tokenizer.encode(" ".join(rng.choice(WORDS) for _ in range(tokens + 8)), add_special_tokens=False)
    while len(ids) < tokens:
        ids += ids
    return ids[:tokens]


def workloads(tokenizer, churn: int, gap_ms: float, uniform: int, tokens: int) -> dict[str, list[tuple]]:
    """{name: [(arrival offset s, prompt ids, max_tokens)]}, seeded."""
    rng, arrival, churned = random.Random(7), 0.0, []
    for _ in range(churn):
        length = round(16 * (2000 / 16) ** rng.random())  # log-uniform in 16..2000
        churned.append((arrival, prompt_ids(tokenizer, rng, length), rng.randint(16, 128)))
        arrival += rng.expovariate(1000 / gap_ms) if gap_ms > 0 else 0.0
    rng = random.Random(8)
    return {"churn": churned,
            "uniform": [(0.0, prompt_ids(tokenizer, rng, rng.randint(8, 24)), tokens) for _ in range(uniform)]}


async def drive(engine, requests: list[tuple]) -> tuple[float, int, list[list[int]]]:
    """Submit the requests on time; (seconds, completion tokens, outputs)."""
    start = time.perf_counter()

    async def one(index: int, arrival: float, ids: list[int], max_tokens: int) -> list[int]:
        await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
        request = GenerationRequest(f"r{index}", ids, SamplingParams(max_tokens, temperature=0, ignore_eos=True))
        out = []
        async for event in engine.generate(request):
            out += event.token_ids
        return out

    outputs = await asyncio.gather(*(one(i, *r) for i, r in enumerate(requests)))
    return time.perf_counter() - start, sum(len(o) for o in outputs), outputs


def hf_static(model, pad_id: int, requests: list[tuple]) -> tuple[float, int]:
    """HF generate on all requests as one left-padded batch (uniform prompts: little padding)."""
    width = max(len(ids) for _, ids, _ in requests)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for _, p, _ in requests])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p, _ in requests])
    new = max(n for _, _, n in requests)
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, eos_token_id=None,
                   pad_token_id=pad_id)
    return time.perf_counter() - start, new * len(requests)


def hf_one_by_one(model, pad_id: int, requests: list[tuple]) -> list[list[int]]:
    outputs = []
    for _, ids, max_tokens in requests:
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=pad_id)
        outputs.append(out[0, len(ids):].tolist())
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--churn", type=int, default=32, help="requests of the churn workload")
    parser.add_argument("--gap-ms", type=float, default=100.0, help="mean gap between churn arrivals")
    parser.add_argument("--uniform", type=int, default=32, help="requests of the uniform workload, all at once")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each uniform request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-rev", default="", help="git revision of the previous engine (default: "
                                                           f"the parent of the commit that removed padded_batch.py)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rev = args.baseline_rev or default_baseline_rev()
    model_dir = ensure_tiny_model(cache_dir() / "models" / MODEL_NAME, log=log)
    batch = max(args.churn, args.uniform)
    with tempfile.TemporaryDirectory() as scratch:
        baseline_class, baseline_scheduler = import_baseline(rev, Path(scratch))
        engines = {"candidate": TransformersEngine("tiny", model_dir, scheduler=SchedulerSection(max_batch_size=batch)),
                   "baseline": baseline_class("tiny", model_dir, scheduler=baseline_scheduler(max_batch_size=batch))}
        for engine in engines.values():
            engine.load()
        try:
            result = compare(engines, args, log)
        finally:
            for engine in engines.values():
                engine.close()
    result.update(baseline_rev=subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], text=True,
                                              capture_output=True).stdout.strip(),
                  repeats=args.repeats, torch_threads=torch.get_num_threads(), load_avg_1m=round(os.getloadavg()[0], 2),
                  workloads={"churn": {"requests": args.churn, "mean_gap_ms": args.gap_ms, "prompt_tokens": "16..2000",
                                       "max_tokens": "16..128"},
                             "uniform": {"requests": args.uniform, "max_tokens": args.tokens}})
    print(json.dumps(result))
    return 0


def compare(engines: dict, args, log) -> dict:
    """Run the workloads alternately; the figures of the JSON line."""
    candidate = engines["candidate"]
    model, tokenizer = candidate.model, candidate.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loads = workloads(tokenizer, args.churn, args.gap_ms, args.uniform, args.tokens)
    for engine in engines.values():
        asyncio.run(drive(engine, [(0.0, loads["churn"][0][1][:16], 4)]))  # first-request costs stay out
    rates = {key: [] for key in ("candidate_churn", "baseline_churn", "hf_static_uniform", "candidate_uniform",
                                 "baseline_uniform")}
    outputs: dict[str, list] = {}
    for repeat in range(args.repeats):
        order = ["baseline", "candidate"] if repeat % 2 == 0 else ["candidate", "baseline"]
        for name in order:
            seconds, tokens, out = asyncio.run(drive(engines[name], loads["churn"]))
            rates[f"{name}_churn"].append(tokens / seconds)
            outputs.setdefault(f"{name}_churn", out)
        seconds, tokens = hf_static(model, pad, loads["uniform"])
        rates["hf_static_uniform"].append(tokens / seconds)
        for name in reversed(order):
            seconds, tokens, out = asyncio.run(drive(engines[name], loads["uniform"]))
            rates[f"{name}_uniform"].append(tokens / seconds)
            outputs.setdefault(f"{name}_uniform", out)
        log(f"run {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items()))
    reference = {w: hf_one_by_one(model, pad, loads[w]) for w in ("churn", "uniform")}
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "churn_candidate_vs_baseline": round(median["candidate_churn"] / median["baseline_churn"], 2),
        "uniform_candidate_vs_hf_static": round(median["candidate_uniform"] / median["hf_static_uniform"], 2),
        "uniform_candidate_vs_baseline": round(median["candidate_uniform"] / median["baseline_uniform"], 2),
        "greedy_equal_to_hf": {name: all(outputs[f"{name}_{w}"] == reference[w] for w in reference)
                               for name in engines},
        "tok_per_s": {k: round(v, 1) for k, v in median.items()},
        "tok_per_s_runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "churn_prompt_tokens": sum(len(ids) for _, ids, _ in loads["churn"]),
    }


if __name__ == "__main__":
    sys.exit(main())
