"""Incremental detokenization with stop strings, shared by the engines."""

from __future__ import annotations


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas, honouring stop strings.

    Text that could be the start of a stop string is held back until it is known not to be one,
    and a trailing incomplete UTF-8 sequence (decoded as U+FFFD) waits for the next token, so a
    client never sees a stop string or a broken character.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        # Only a short window of ids is decoded per token: ids[_prefix:_read] were already turned
        # into text, and decoding them again gives the context (e.g. a leading space) for the rest.
        self._prefix = 0
        self._read = 0
        self._text = ""
        self._emitted = 0

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; returns (new text, whether a stop string was reached)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        known = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        window = decode(self._ids[self._prefix:], skip_special_tokens=True)
        if window.endswith("\ufffd"):
            return "", False
        self._text += window[len(known):]
        self._prefix, self._read = self._read, len(self._ids)
        text = self._text
        stop_at = self._find_stop()
        if stop_at is not None:
            delta = text[self._emitted : stop_at]
            self._emitted = stop_at
            return delta, True
        safe_end = len(text) - self._stop_prefix_length()
        delta = text[self._emitted : safe_end] if safe_end > self._emitted else ""
        self._emitted = max(self._emitted, safe_end)
        return delta, False

    def flush(self) -> str:
        """Text held back at the end of a generation (a partial stop-string prefix)."""
        delta = self._text[self._emitted :]
        self._emitted = len(self._text)
        return delta

    def _find_stop(self) -> int | None:
        found = None
        for stop in self._stop:
            index = self._text.find(stop, max(0, self._emitted - len(stop) + 1))
            if index != -1 and (found is None or index < found):
                found = index
        return found

    def _stop_prefix_length(self) -> int:
        longest = 0
        for stop in self._stop:
            for length in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
