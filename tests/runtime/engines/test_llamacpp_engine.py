"""The llama.cpp engine and the HF -> GGUF conversion, on the tiny model converted for real."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import openai
import pytest

from deepfleet.paths import cache_dir
from deepfleet_runtime.config import LimitsSection
from deepfleet_runtime.engines.base import GenerationRequest, ModelLoadError, SamplingParams
from deepfleet_runtime.engines.llamacpp_engine import cpu_has_amx, open_llama
from deepfleet_runtime.gguf_convert import ConversionError, convert, llama_cpp_sources
from deepfleet_runtime.server import create_app
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port

llama_cpp = pytest.importorskip("llama_cpp", reason="make setup installs deepfleet-runtime[llamacpp]")


@pytest.fixture(scope="module")
def sources():
    return llama_cpp_sources(cache_dir() / "llama.cpp")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory, tiny_model_dir, sources):
    return convert(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf", "q8_0", "gpt-2", sources)


@pytest.fixture(scope="module")
def engine(gguf):
    from deepfleet_runtime.engines.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine("tiny-gguf", gguf)
    engine.load()
    yield engine
    engine.close()


def _generate(engine, ids, params):
    async def main():
        return [e async for e in engine.generate(GenerationRequest("l1", ids, params))]
    return asyncio.run(main())


def test_conversion_to_q4_0_by_command_is_smaller_than_q8_0(tmp_path, tiny_model_dir, gguf, sources):
    out = tmp_path / "tiny-q4_0.gguf"
    result = subprocess.run([sys.executable, "-m", "deepfleet_runtime.cli", "convert-gguf", str(tiny_model_dir),
                             "--out", str(out), "--type", "q4_0", "--pre-tokenizer", "gpt-2",
                             "--llama-cpp-src", str(sources)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    q8_size, f32_bytes = gguf.stat().st_size, 18_649_312
    assert out.stat().st_size < 0.6 * q8_size < 0.6 * f32_bytes
    assert not list(tmp_path.glob(".*"))  # no staging left behind


def test_conversion_errors_name_the_fix(tmp_path, tiny_model_dir, sources):
    with pytest.raises(ConversionError, match="--pre-tokenizer gpt-2"):
        convert(tiny_model_dir, tmp_path / "x.gguf", "q8_0", "", sources)
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(ConversionError, match="holds no config.json"):
        convert(tmp_path, tmp_path / "y.gguf", "q8_0", "gpt-2", sources)


def test_greedy_output_equals_raw_llama_cpp(engine, gguf):
    ids = engine.encode_text("The fleet serves models")
    raw = open_llama(llama_cpp.Llama, gguf, n_ctx=512, verbose=False)  # llama.cpp as the engine opens it
    expected = raw.create_completion(ids, max_tokens=12, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                                     repeat_penalty=1.0)
    events = _generate(engine, ids, SamplingParams(12, temperature=0))
    assert "".join(e.text for e in events) == expected["choices"][0]["text"]
    assert events[-1].completion_tokens == expected["usage"]["completion_tokens"]


def test_stop_strings_and_max_tokens(engine):
    ids = engine.encode_text("The fleet")
    free = "".join(e.text for e in _generate(engine, ids, SamplingParams(16, temperature=0, ignore_eos=True)))
    assert len(free) > 4
    stop = free[2:4]
    stopped = _generate(engine, ids, SamplingParams(16, temperature=0, stop=(stop,), ignore_eos=True))
    assert stopped[-1].finish_reason == "stop"
    assert "".join(e.text for e in stopped) == free[: free.index(stop)]
    limited = _generate(engine, ids, SamplingParams(5, temperature=0, ignore_eos=True))
    assert limited[-1].finish_reason == "length" and limited[-1].completion_tokens == 5


def test_chat_over_the_openai_sdk_with_the_gguf_chat_template(engine):
    port = free_port()
    app = create_app(engine, LimitsSection(max_prompt_tokens=256, max_tokens=64, default_max_tokens=8))
    with ServerThread(build_server(app, "127.0.0.1", port)):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        response = client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=6, temperature=0)
        stream = client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=6, temperature=0, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert response.usage.prompt_tokens == len(engine.encode_chat([{"role": "user", "content": "Hi"}]))
    assert response.choices[0].message.content == streamed


def test_an_encrypted_gguf_release_serves_the_same_tokens_and_leaves_no_plaintext(tmp_path, gguf, engine, store,
                                                                                    monkeypatch):
    from deepfleet_runtime.engines.llamacpp_engine import LlamaCppEngine

    source = tmp_path / "source"
    source.mkdir()
    shutil.copyfile(gguf, source / gguf.name)
    store.write(source, tmp_path / "release")
    memory = Path(tempfile.mkdtemp(dir="/dev/shm"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(memory))  # as the unit's private tmpfs
    encrypted = LlamaCppEngine("tiny-gguf", tmp_path / "release", keys_dir=store.root / "keys")
    try:
        encrypted.load()
        assert list(memory.iterdir()) == []  # read into llama.cpp's memory, then wiped
        ids = engine.encode_text("The fleet serves models")
        params = SamplingParams(12, temperature=0, ignore_eos=True)
        assert [e.token_ids for e in _generate(encrypted, ids, params)] == [e.token_ids for e in _generate(engine, ids, params)]
        assert encrypted.stats().weight_bytes == gguf.stat().st_size
    finally:
        encrypted.close()
        memory.rmdir()
    with pytest.raises(ModelLoadError, match="set model.keys_dir in runtime.yaml"):
        LlamaCppEngine("tiny-gguf", tmp_path / "release").load()


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert cpu_has_amx(flags)
    flags.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_amx(flags) and not cpu_has_amx(tmp_path / "absent")
