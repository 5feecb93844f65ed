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
