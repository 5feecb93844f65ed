"""Engine throughput on CPU with the tiny DeepSeek-V3, candidates and baselines side by side.

Workloads (greedy, generating past end-of-sequence so every request makes its full length):
  uniform  32 requests x 64 new tokens, all at once
  mixed    64 requests arriving every --gap-ms, output lengths 8..256 (seeded)
Baselines, in the same process and run interleaved with the candidates (median of --repeats):
  HF generate one request at a time (uniform; HF's padded batch of all 32 is also reported, as the
  ceiling a batch-32 forward allows on this machine); HF static padded batches of up to 32 in arrival
  order, each run to completion before the next starts (mixed); raw llama-cpp-python on the same
  q8_0 GGUF (llama.cpp engine). Also: greedy outputs vs HF one-at-a-time, int8/bf16 weight bytes.

Usage: .venv/bin/python bench/engine_throughput.py [--repeats 3]
The last line is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepfleet.demo import MODEL_NAME, ensure_tiny_model
from deepfleet.paths import cache_dir
from deepfleet_runtime.config import LlamaCppSection, SchedulerSection
from deepfleet_runtime.engines.base import GenerationRequest, SamplingParams
from deepfleet_runtime.engines.loading import load_model_and_tokenizer
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from deepfleet_runtime.quantize import QuantizationPlan, weight_bytes

UNIFORM_REQUESTS, UNIFORM_TOKENS = 32, 64
MIXED_REQUESTS, STATIC_BATCH = 64, 32


def prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = "fleet model gateway host token cache batch request answer hospital key secure".split()
    return [f"Request {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 24))) for i in range(count)]


async def run_engine(engine, requests: list[tuple[float, list[int], int]], ignore_eos: bool = True):
    """Submit (arrival offset s, prompt ids, max tokens) requests on time; (seconds, tokens, outputs)."""
    start = time.perf_counter()

    async def one(index, arrival, ids, max_tokens):
        await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
        request = GenerationRequest(f"r{index}", ids, SamplingParams(max_tokens, temperature=0, ignore_eos=ignore_eos))
        out = []
        async for event in engine.generate(request):
            out += event.token_ids
        return out

    outputs = await asyncio.gather(*(one(i, *r) for i, r in enumerate(requests)))
    return time.perf_counter() - start, sum(len(o) for o in outputs), outputs


def hf_sequential(model, pad_id: int, requests) -> tuple[float, int, list[list[int]]]:
    start, outputs = time.perf_counter(), []
    for _, ids, max_tokens in requests:
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=pad_id)
        outputs.append(out[0, len(ids):].tolist())
    return time.perf_counter() - start, sum(len(o) for o in outputs), outputs


def hf_static_batches(model, tokenizer, requests) -> tuple[float, int]:
    """A naive server: when idle, take what has arrived (up to 32), pad, run to the longest, repeat."""
    start, done, tokens = time.perf_counter(), 0, 0
    while done < len(requests):
        now = time.perf_counter() - start
        if requests[done][0] > now:
            time.sleep(requests[done][0] - now)
            now = time.perf_counter() - start
        batch = [r for r in requests[done: done + STATIC_BATCH] if r[0] <= now]
        encoded = tokenizer.pad([{"input_ids": ids} for _, ids, _ in batch], return_tensors="pt")
        longest = max(n for _, _, n in batch)
        model.generate(**encoded, max_new_tokens=longest, do_sample=False, eos_token_id=None,
                       pad_token_id=tokenizer.pad_token_id)
        tokens += sum(n for _, _, n in batch)
        done += len(batch)
    return time.perf_counter() - start, tokens


def raw_llamacpp(llama, requests) -> tuple[float, int]:
    start, tokens = time.perf_counter(), 0
    for _, ids, max_tokens in requests:
        result = llama.create_completion(ids, max_tokens=max_tokens, temperature=0.0, top_k=0, top_p=1.0,
                                         min_p=0.0, repeat_penalty=1.0)
        tokens += result["usage"]["completion_tokens"]
    return time.perf_counter() - start, tokens


def int8_weight_ratio(model_dir: Path) -> tuple[float, int, int]:
    bf16, _ = load_model_and_tokenizer(model_dir, "float32", "cpu", QuantizationPlan("bf16", "none"))
    int8, _ = load_model_and_tokenizer(model_dir, "bfloat16", "cpu", QuantizationPlan("int8", "torchao"))
    b, i = weight_bytes(bf16, linear_and_experts_only=True), weight_bytes(int8, linear_and_experts_only=True)
    return i / b, i, b


def llamacpp_pair(model_dir: Path, workdir: Path):
    """(our engine, raw Llama) on one q8_0 GGUF converted from the tiny model, or None without llama_cpp."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from deepfleet_runtime.engines.llamacpp_engine import LlamaCppEngine, open_llama
    from deepfleet_runtime.gguf_convert import convert

    gguf = convert(model_dir, workdir / "tiny-q8_0.gguf", "q8_0", pre_tokenizer="gpt-2")
    engine = LlamaCppEngine("tiny", gguf, LlamaCppSection())
    engine.load()
    raw = open_llama(Llama, gguf, n_ctx=LlamaCppSection().n_ctx, n_batch=LlamaCppSection().n_batch, verbose=False)
    return engine, raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="time between mixed arrivals")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model_dir = ensure_tiny_model(cache_dir() / "models" / MODEL_NAME, log=lambda m: print(m, file=sys.stderr))
    engine = TransformersEngine("tiny", model_dir, scheduler=SchedulerSection(max_batch_size=STATIC_BATCH))
    engine.load()
    model, tokenizer = engine.model, engine.tokenizer

    uniform = [(0.0, engine.encode_text(p), UNIFORM_TOKENS) for p in prompts(UNIFORM_REQUESTS, 1)]
    rng = random.Random(2)
    mixed = [(i * args.gap_ms / 1000, engine.encode_text(p), rng.randint(8, 256))
             for i, p in enumerate(prompts(MIXED_REQUESTS, 3))]
    names = ("sequential", "ours_uniform", "static_uniform", "static", "ours_mixed", "raw_llamacpp", "ours_llamacpp")
    rates = {name: [] for name in names}
    greedy_match = True
    with tempfile.TemporaryDirectory() as scratch:
        pair = llamacpp_pair(model_dir, Path(scratch))
        for repeat in range(args.repeats):
            seconds, tokens, reference = hf_sequential(model, tokenizer.pad_token_id, uniform)
            rates["sequential"].append(tokens / seconds)
            seconds, tokens, ours = asyncio.run(run_engine(engine, uniform))
            rates["ours_uniform"].append(tokens / seconds)
            greedy_match &= ours == reference
            seconds, tokens = hf_static_batches(model, tokenizer, uniform)  # the padded-batch ceiling
            rates["static_uniform"].append(tokens / seconds)
            seconds, tokens = hf_static_batches(model, tokenizer, mixed)
            rates["static"].append(tokens / seconds)
            seconds, tokens, _ = asyncio.run(run_engine(engine, mixed))
            rates["ours_mixed"].append(tokens / seconds)
            if pair:
                seconds, tokens = raw_llamacpp(pair[1], uniform)
                rates["raw_llamacpp"].append(tokens / seconds)
                seconds, tokens, _ = asyncio.run(run_engine(pair[0], uniform, ignore_eos=False))
                rates["ours_llamacpp"].append(tokens / seconds)
            print(f"run {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items() if v),
                  file=sys.stderr)
        if pair:
            pair[0].close()
    median = {k: statistics.median(v) for k, v in rates.items() if v}
    ratio, int8_bytes, bf16_bytes = int8_weight_ratio(model_dir)
    result = {
        "uniform_vs_sequential": round(median["ours_uniform"] / median["sequential"], 2),
        "mixed_vs_static": round(median["ours_mixed"] / median["static"], 2),
        "uniform_static_vs_sequential": round(median["static_uniform"] / median["sequential"], 2),
        "greedy_match": greedy_match,
        "llamacpp_vs_raw": round(median["ours_llamacpp"] / median["raw_llamacpp"], 2) if pair else None,
        "int8_weight_ratio": round(ratio, 3),
        "tok_per_s": {k: round(v, 1) for k, v in median.items()},
        "int8_bytes": int8_bytes, "bf16_bytes": bf16_bytes, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
    }
    engine.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
