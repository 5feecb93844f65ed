"""Reasoning split for DeepSeek-R1 style models, as vLLM's deepseek_r1 parser does.

Everything before </think> is reasoning, everything after is the answer; a leading <think> is
dropped, and so are the newlines between </think> and the answer. R1's chat template already opens
the <think> block in the prompt, so an output without </think> is all reasoning. In R1 and its
distills the markers are plain tokens whose text survives decoding: they are matched as text.
Only a tokenizer whose markers are special tokens (they decode to nothing) gives their ids, and
then the marker is found by id.
"""

from __future__ import annotations

START, END = "<think>", "</think>"


class ReasoningSplitter:
    """Feeds on (text, token ids) deltas; returns (reasoning delta, content delta) per feed."""

    def __init__(self, marker_ids: tuple[int, int] | None = None):
        self._start_id, self._end_id = marker_ids or (None, None)
        self._in_reasoning = True
        self._answer_started = False  # newlines right after </think> are not part of the answer
        self._held = ""  # text that may be the start of a marker

    def feed(self, text: str, token_ids: list[int]) -> tuple[str, str]:
        if not self._in_reasoning:
            return "", self._answer(text)
        buffer = self._held + text
        if END in buffer:
            reasoning, content = buffer.split(END, 1)
            self._in_reasoning, self._held = False, ""
            return reasoning.replace(START, ""), self._answer(content)
        if self._end_id is not None and self._end_id in token_ids:
            # a special-token marker decoded to nothing: the delta before it is reasoning
            self._in_reasoning, self._held = False, ""
            return buffer.replace(START, ""), ""
        keep = _partial_marker_suffix(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        reasoning = buffer[: len(buffer) - keep].replace(START, "")
        return reasoning, ""

    def flush(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        return (held, "") if self._in_reasoning else ("", self._answer(held))

    def _answer(self, text: str) -> str:
        if not self._answer_started:
            text = text.lstrip("\n")
            self._answer_started = bool(text)
        return text


def _partial_marker_suffix(text: str) -> int:
    for marker in (END, START):
        for length in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:length]):
                return length
    return 0
