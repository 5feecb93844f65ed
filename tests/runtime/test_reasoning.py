"""DeepSeek-R1 style reasoning split, by text and by marker token ids, streamed and whole."""

from __future__ import annotations

import openai
import pytest

from deepfleet_runtime.reasoning import ReasoningSplitter
from deepfleet_runtime.server import create_app
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port
from tests.runtime.conftest import LIMITS


def _feed_all(splitter, deltas):
    reasoning, content = "", ""
    for text, ids in deltas:
        r, c = splitter.feed(text, ids)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.flush()
    return reasoning + r, content + c


def test_text_markers_split_even_when_cut_across_deltas():
    deltas = [("<thi", []), ("nk>Let me think", []), (" hard.</th", []), ("ink>\n\nThe answer", []), (" is 4.", [])]
    assert _feed_all(ReasoningSplitter(), deltas) == ("Let me think hard.", "The answer is 4.")


def test_special_token_markers_split_by_id():
    deltas = [("", [10]), ("pondering", [5]), ("", [11]), ("answer", [6])]
    assert _feed_all(ReasoningSplitter((10, 11)), deltas) == ("pondering", "answer")


def test_output_without_an_end_marker_is_all_reasoning():
    assert _feed_all(ReasoningSplitter(), [("still thinking <", []), ("x", [])]) == ("still thinking <x", "")


@pytest.fixture(scope="module")
def reasoning_client(engine):
    port = free_port()
    app = create_app(engine, LIMITS, load_in_background=False, reasoning_parser="deepseek_r1")
    with ServerThread(build_server(app, "127.0.0.1", port)):
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)


def test_server_puts_the_unfinished_think_block_into_reasoning_content(reasoning_client):
    messages = [{"role": "user", "content": "Why?"}]
    whole = reasoning_client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    message = whole.choices[0].message.model_dump()
    assert message["reasoning_content"] and message["content"] is None  # random weights never close </think>
    chunks = list(reasoning_client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                                           temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.model_dump().get("reasoning_content") or "" for c in chunks if c.choices)
    assert streamed == message["reasoning_content"]


ANSWER = "Let me think: 2 + 2.\n</think>\n\nThe answer is 4."


@pytest.fixture()
def real_reasoning_client(real_tokenizer):
    """The server with the deepseek_r1 parser over a real DeepSeek tokenizer, the model "saying" ANSWER."""
    from tests.runtime.scripted_engine import ScriptedEngine

    script = real_tokenizer.encode(ANSWER, add_special_tokens=False) + [real_tokenizer.eos_token_id]
    port = free_port()
    app = create_app(ScriptedEngine("r1", real_tokenizer, script), LIMITS, load_in_background=False,
                     reasoning_parser="deepseek_r1")
    with ServerThread(build_server(app, "127.0.0.1", port)):
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)


def test_real_tokenizers_keep_the_end_marker_out_of_both_parts(real_reasoning_client, real_tokenizer):
    # </think> is a plain (not special) token in R1 and its distills: its text survives decoding
    marker = real_tokenizer.convert_tokens_to_ids("</think>")
    assert real_tokenizer.decode([marker], skip_special_tokens=True) == "</think>"
    messages = [{"role": "user", "content": "2 + 2?"}]
    whole = real_reasoning_client.chat.completions.create(model="r1", messages=messages, max_tokens=40)
    message = whole.choices[0].message.model_dump()
    assert (message["reasoning_content"], message["content"]) == ("Let me think: 2 + 2.\n", "The answer is 4.")
    assert whole.choices[0].finish_reason == "stop"
    chunks = list(real_reasoning_client.chat.completions.create(model="r1", messages=messages, max_tokens=40,
                                                                stream=True))
    deltas = [c.choices[0].delta.model_dump() for c in chunks if c.choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]


def test_real_chat_templates_open_the_think_block_in_the_prompt(real_tokenizer):
    from deepfleet_runtime.engines.hf_tokens import chat_prompt_ids

    ids = chat_prompt_ids(real_tokenizer, [{"role": "user", "content": "Hi"}])
    assert ids[0] == real_tokenizer.bos_token_id
    assert real_tokenizer.decode(ids[-2:]) == "<think>\n"  # the answer starts inside <think>


def test_real_tokenizer_markers_are_split_by_text_even_across_held_deltas(real_tokenizer):
    from deepfleet_runtime.engines.hf_tokens import think_token_ids

    # markers that decode to text are matched as text: no id shortcut that would leave "</think>" behind
    splitter = ReasoningSplitter(think_token_ids(real_tokenizer))
    marker = real_tokenizer.convert_tokens_to_ids("</think>")
    deltas = [("pondering ", [5]), ("", [marker]), ("</think>\n", [7]), ("\nanswer", [8])]
    assert _feed_all(splitter, deltas) == ("pondering ", "answer")


def test_completion_prompts_start_with_deepseeks_bos(real_tokenizer):
    from deepfleet_runtime.engines.hf_tokens import text_prompt_ids

    # transformers 5 loads these tokenizers as TokenizersBackend, which adds no BOS to plain text
    assert real_tokenizer.encode("Hello", add_special_tokens=True)[0] != real_tokenizer.bos_token_id
    ids = text_prompt_ids(real_tokenizer, "Hello")
    assert ids[0] == real_tokenizer.bos_token_id and ids.count(real_tokenizer.bos_token_id) == 1
